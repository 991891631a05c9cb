#!/usr/bin/env bash
# Re-runs the edge attacks of issue 11 against a live 3-node cluster (RF 3,
# default settings) and prints what each did:
#   1. 256 concurrent 1 MiB PUTs for SECONDS through node 1: its peak RSS
#      (VmHWM) and anonymous RSS, and the answers by status;
#   2. 3,000 slowloris connections (a partial head, then silence): how many
#      the node has closed after 12 s, and how long a normal request took
#      meanwhile;
#   3. a Content-Length far over the limit with no body: time to the answer.
#
#   scripts/edge-attacks.sh [SECONDS] [KVNODE_BINARY]
#
# KVNODE_BINARY defaults to a release build of this tree; give an older
# build to compare. Ports 7760..7765 on 127.0.0.1; everything it starts is
# stopped on exit. Needs wrk (installed from Debian if missing) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
source scripts/cluster.sh
bin=$(kvnode_binary "${2:-}")
ensure_wrk
start_cluster "$bin" 7760
sleep 2
node1=${pids[0]}
status() { awk -v f="$2:" '$1 == f { printf "%.0f MiB", $2 / 1024 }' "/proc/$1/status"; }

echo "== 256 concurrent 1 MiB PUTs for $secs s through node 1"
cat >"$dir/big.lua" <<'LUA'
counter = 0
body = string.rep("x", 1048576)
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/v1/kv/big-" .. counter, nil, body)
end
statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
done = function(summary, latency, requests)
  for s, n in pairs(statuses) do io.write(string.format("status %d: %d\n", s, n)) end
end
LUA
echo "node 1 before: RSS $(status "$node1" VmRSS), anonymous $(status "$node1" RssAnon)"
peak_anon=0
( while kill -0 "$node1" 2>/dev/null; do
    awk '$1 == "RssAnon:" { print $2 }' "/proc/$node1/status"; sleep 0.05
  done ) >"$dir/anon" &
sampler=$!
wrk -t2 -c256 -d"${secs}s" --timeout 30s -s "$dir/big.lua" http://127.0.0.1:7760 | grep -E "Requests/sec|status|Non-2xx|Socket errors" || true
kill "$sampler" 2>/dev/null || true
peak_anon=$(sort -n "$dir/anon" | tail -1)
echo "node 1 after: peak RSS (VmHWM) $(status "$node1" VmHWM), peak anonymous RSS $((peak_anon / 1024)) MiB"

echo "== 3,000 slowloris connections to node 1"
python3 - <<'PY'
import resource, socket, time, urllib.request
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
conns = []
for _ in range(3000):
    s = socket.socket()
    s.setblocking(True)
    try:
        s.settimeout(2)
        s.connect(("127.0.0.1", 7760))
        s.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)
        conns.append(s)
    except OSError:
        s.close()
print(f"opened {len(conns)} connections")
start = time.time()
try:
    code = urllib.request.urlopen("http://127.0.0.1:7760/health", timeout=30).status
    print(f"a normal request meanwhile: {code} in {1000 * (time.time() - start):.0f} ms")
except Exception as e:
    print(f"a normal request meanwhile failed after {1000 * (time.time() - start):.0f} ms: {e}")
time.sleep(12)
closed = 0
for s in conns:
    try:
        if s.recv(1) == b"":
            closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(f"after 12 s the node had closed {closed} of {len(conns)}")
PY

echo "== Content-Length: 100000000 with no body"
curl -s -o /dev/null -w "answer %{http_code} in %{time_total} s\n" --max-time 30 \
  -X PUT -H "Content-Length: 100000000" http://127.0.0.1:7760/v1/kv/huge || true
