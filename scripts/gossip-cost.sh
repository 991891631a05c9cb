#!/usr/bin/env bash
# What gossip costs each node of a live 3-node cluster (RF 3): the CPU of
# each kvnode process and its gossip datagrams and bytes per second, first
# idle, then under a QUORUM write load (wrk, 16 connections, 100-byte values).
#
#   scripts/gossip-cost.sh [SECONDS] [KVNODE_BINARY]
#
# SECONDS defaults to 30 per phase. KVNODE_BINARY defaults to a release build
# of this tree; give another build (an older commit's) to compare CPU. Gossip
# bytes come from kvnode_gossip_* metrics, which builds before sealed gossip
# lack ("n/a"). Under load the CPU column is mostly the requests', not
# gossip's: `cargo bench -p strata-server --bench gossip` gives sealing's own
# cost per message. Ports 7750..7755 on 127.0.0.1; everything it starts is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
source scripts/cluster.sh
bin=$(kvnode_binary "${2:-}")
ensure_wrk
start_cluster "$bin" 7750
sleep 3

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { # sum of a metric's series with the given label filter, or n/a
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" -v f="$3" \
    'index($0, m) == 1 && index($0, f) { s += $NF; n++ } END { if (n) print s; else print "n/a" }'
}
sample() { # node index -> "ticks datagrams bytes"
  local port=$((7748 + 2 * $1))
  echo "$(ticks "${pids[$(($1 - 1))]}") \
$(metric $port kvnode_gossip_datagrams_total 'direction="sent"') \
$(metric $port kvnode_gossip_bytes_total 'direction="sent"')"
}
phase() {
  local name=$1; shift
  local before=() after=()
  for i in 1 2 3; do before[$i]=$(sample $i); done
  "$@"
  for i in 1 2 3; do after[$i]=$(sample $i); done
  local hz; hz=$(getconf CLK_TCK)
  for i in 1 2 3; do
    read -r t0 d0 b0 <<<"${before[$i]}"; read -r t1 d1 b1 <<<"${after[$i]}"
    awk -v n="$name" -v i="$i" -v s="$secs" -v hz="$hz" -v t0="$t0" -v t1="$t1" \
        -v d0="$d0" -v d1="$d1" -v b0="$b0" -v b1="$b1" 'BEGIN {
      cpu = 100 * (t1 - t0) / hz / s
      if (d0 == "n/a") { dps = "n/a"; bps = "n/a"; plain = "n/a" }
      else { dps = sprintf("%.1f", (d1 - d0) / s); bps = sprintf("%.0f", (b1 - b0) / s);
             plain = sprintf("%.0f", (b1 - b0 - 67 * (d1 - d0)) / s) }
      printf "%-5s node%d  cpu %5.2f%%  gossip sent: %s datagrams/s, %s bytes/s (%s unsealed)\n", n, i, cpu, dps, bps, plain }'
  done
}
idle() { sleep "$secs"; }
load() {
  cat >"$dir/put.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/v1/kv/cost-" .. counter, nil, string.rep("v", 100))
end
LUA
  wrk -t1 -c16 -d"${secs}s" -s "$dir/put.lua" http://127.0.0.1:7750 | grep -E "Requests/sec"
}
echo "binary: $bin; $secs s per phase"
phase idle idle
phase load load
