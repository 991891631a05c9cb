#!/usr/bin/env bash
# How long hinted handoff takes to bring a restarted replica back, and what
# its replay costs client writes: a 3-node cluster (RF 3) on loopback;
# node n3 is killed (SIGKILL), KEYS keys are written at QUORUM while it is
# down (so n3 misses every one, and n1 keeps a hint of each), then n3 is
# restarted with no client reads, and the script times how long until no
# hints are pending on n1. p99 of QUORUM writes (wrk, 16 connections,
# 100-byte values) is measured on n2 before the kill (steady state) and
# during the replay, over the same window length.
#
#   scripts/hints-converge.sh [KEYS] [KVNODE_BINARY]
#
# KEYS defaults to 100000. KVNODE_BINARY defaults to a release build of this
# tree. A sample of 1,000 of the keys is then read from n3's own engine
# (POST /internal/v1/read) and must all be there. Ports 7760..7765 on
# 127.0.0.1; everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-100000}
source scripts/cluster.sh
bin=$(kvnode_binary "${2:-}")
ensure_wrk
start_cluster "$bin" 7760
n1=http://127.0.0.1:7760 n2=http://127.0.0.1:7762 n3=http://127.0.0.1:7764
window=5

pending() { # hints n1 holds for n3
  curl -sf "$n1/v1/node" | python3 -c 'import json,sys; print(json.load(sys.stdin)["hints"].get("n3", {}).get("hints", 0))'
}
write_load_lua
# Writes keys missed-1..missed-KEYS, then the same keys again (wrk cannot
# stop itself after N requests): it is stopped once n1 holds KEYS hints,
# which it does only after each key was written at least once.
cat >"$dir/missed.lua" <<LUA
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/v1/kv/missed-" .. ((counter - 1) % $keys + 1) .. "?consistency=quorum", nil, string.rep("m", 100))
end
LUA

sleep 3
steady=$(wrk -t1 -c16 -d"${window}s" --latency -s "$dir/load.lua" "$n2" | p99)

kill -9 "${pids[2]}"
n3_status() {
  curl -sf "$n1/v1/cluster" | python3 -c 'import json,sys; print([m["status"] for m in json.load(sys.stdin)["members"] if m["id"] == "n3"][0])'
}
until [ "$(n3_status)" = DOWN ]; do sleep 0.2; done
start=$(date +%s.%N)
wrk -t1 -c16 -d3600s -s "$dir/missed.lua" "$n1" >/dev/null &
wrk_pid=$!
while [ "$(pending)" -lt "$keys" ]; do sleep 0.2; done
kill "$wrk_pid"
wait "$wrk_pid" 2>/dev/null || true
wrote=$(echo "$(date +%s.%N) - $start" | bc)
stored=$(pending)
echo "wrote $keys keys at QUORUM with n3 down in ${wrote}s; n1 holds $stored hints for n3"

"$bin" --node-id n3 --listen 127.0.0.1:7764 --seeds 127.0.0.1:7761 --data-dir "$dir/n3" >>"$dir/n3.log" 2>&1 &
pids[2]=$!
back=$(date +%s.%N)
# The replay has begun once the count drops; the p99 window starts then.
while [ "$(pending)" -ge "$stored" ]; do sleep 0.1; done
wrk -t1 -c16 -d"${window}s" --latency -s "$dir/load.lua" "$n2" >"$dir/during.txt" &
wrk_pid=$!
while [ "$(pending)" -gt 0 ]; do sleep 0.1; done
done_at=$(date +%s.%N)
wait "$wrk_pid"
during=$(p99 <"$dir/during.txt")
echo "restart -> no hints pending: $(echo "$done_at - $back" | bc) s for $stored hints"

missing=0
for i in $(shuf -i 1-"$keys" -n 1000); do
  code=$("$(dirname "$0")/signed-curl.sh" POST "$n3/internal/v1/read" "missed-$i" \
    -o /dev/null -w '%{http_code}')
  [ "$code" = 200 ] || missing=$((missing + 1))
done
echo "sample of 1000 keys on n3's own engine: $missing missing"
echo "p99 of QUORUM writes (${window}s windows): steady $steady, during replay $during"
