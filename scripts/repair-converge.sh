#!/usr/bin/env bash
# How long anti-entropy repair takes to bring a partitioned replica back,
# and what it costs client writes: a 3-node cluster (RF 3) on loopback with
# hinted handoff and the repair scheduler off, so repair alone heals. Node
# n3 is cut off (SIGSTOP), KEYS keys are written at QUORUM while it is away
# (n1 and n2 take them, n3 misses every one), the partition heals (SIGCONT)
# and `kvnode repair` runs on n3 with no client reads. The script times the
# heal, the repair, and both together. p99 of QUORUM writes (wrk, 16
# connections, 100-byte values) is measured on n2 before the partition
# (steady state, WINDOW seconds) and over the whole repair.
#
#   scripts/repair-converge.sh [KEYS] [KVNODE_BINARY]
#
# KEYS defaults to 100000. KVNODE_BINARY defaults to a release build of this
# tree. A sample of 1,000 of the keys is then read from n3's own engine
# (POST /internal/v1/read) and must all be there. Ports 7770..7775 on
# 127.0.0.1; everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-100000}
window=${WINDOW:-5}
source scripts/cluster.sh
bin=$(kvnode_binary "${2:-}")
ensure_wrk
export KVNODE_MAX_HINT_WINDOW_MS=0 KVNODE_REPAIR_INTERVAL=0
start_cluster "$bin" 7770
n1=http://127.0.0.1:7770 n2=http://127.0.0.1:7772 n3=http://127.0.0.1:7774

status_of_n3() { # as n1 sees it
  curl -sf "$n1/v1/cluster" | python3 -c 'import json,sys; print([m["status"] for m in json.load(sys.stdin)["members"] if m["id"] == "n3"][0])'
}
write_load_lua
# Writes missed-1..missed-KEYS (then wraps round); once KEYS answers came
# back it writes how many were not 204 to $dir/written, for the script to
# stop it (wrk cannot end its own run early).
cat >"$dir/missed.lua" <<LUA
counter = 0
answers = 0
failed = 0
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/v1/kv/missed-" .. ((counter - 1) % $keys + 1) .. "?consistency=quorum", nil, string.rep("m", 100))
end
response = function(status, headers, body)
  answers = answers + 1
  if status ~= 204 then failed = failed + 1 end
  if answers == $keys then
    local f = io.open("$dir/written", "w")
    f:write(failed)
    f:close()
  end
end
LUA

sleep 3
steady=$(wrk -t1 -c16 -d"${window}s" --latency -s "$dir/load.lua" "$n2" | p99)

kill -STOP "${pids[2]}"
until [ "$(status_of_n3)" = DOWN ]; do sleep 0.2; done
start=$(date +%s.%N)
wrk -t1 -c16 -d3600s -s "$dir/missed.lua" "$n1" >/dev/null &
wrk_pid=$!
until [ -s "$dir/written" ]; do sleep 0.2; done
kill "$wrk_pid"
wait "$wrk_pid" 2>/dev/null || true
echo "wrote $keys keys at QUORUM with n3 cut off in $(echo "$(date +%s.%N) - $start" | bc) s ($(cat "$dir/written") answers not 204)"

kill -CONT "${pids[2]}"
healed=$(date +%s.%N)
until [ "$(status_of_n3)" = UP ]; do sleep 0.1; done
up=$(date +%s.%N)
wrk -t1 -c16 -d3600s --latency -s "$dir/load.lua" "$n2" >"$dir/during.txt" &
wrk_pid=$!
"$bin" repair --node 127.0.0.1:7774 --timeout-secs 3600
done_at=$(date +%s.%N)
kill -INT "$wrk_pid"
wait "$wrk_pid" || true
during=$(p99 <"$dir/during.txt")
echo "heal -> n3 UP: $(echo "$up - $healed" | bc) s; repair: $(echo "$done_at - $up" | bc) s; heal -> converged: $(echo "$done_at - $healed" | bc) s for $keys missed keys"

missing=0
for i in $(shuf -i 1-"$keys" -n 1000); do
  code=$("$(dirname "$0")/signed-curl.sh" POST "$n3/internal/v1/read" "missed-$i" \
    -o /dev/null -w '%{http_code}')
  [ "$code" = 200 ] || missing=$((missing + 1))
done
echo "sample of 1000 keys on n3's own engine: $missing missing"
echo "p99 of QUORUM writes: steady $steady (${window}s), during the repair $during"
