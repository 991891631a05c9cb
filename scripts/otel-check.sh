#!/usr/bin/env bash
# Checks kvnode's OpenTelemetry export end to end: builds kvnode with
# `--features otel` (in target/otel, so the default build is untouched),
# lints that build, starts a stand-in OTLP/HTTP collector (Python, records
# what it receives), runs one node with --otel-endpoint pointing at it,
# sends a PUT and a GET with a known x-request-id, stops the node (which
# flushes its spans) and checks the collector received protobuf span batches
# from service "kvnode" that carry that request id.
#
#   scripts/otel-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "otel-check: python3 is missing" >&2; exit 1; }
export CARGO_TARGET_DIR=target/otel
cargo clippy -p strata-server --features otel --bin kvnode -- -D warnings
cargo build -p strata-server --features otel --bin kvnode
bin=target/otel/debug/kvnode

dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

collector_port=$(free_port)
cat >"$dir/collector.py" <<'PY'
import http.server, sys, os
out = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        n = len(os.listdir(out))
        with open(os.path.join(out, f"{n:04d}-{self.path.strip('/').replace('/', '_')}"
                               f"-{self.headers.get('content-type', '').replace('/', '_')}"), "wb") as f:
            f.write(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
mkdir "$dir/received"
python3 "$dir/collector.py" "$collector_port" "$dir/received" &
pids+=($!)

http_port=$(free_port)
gossip_port=$(free_port)
KVNODE_CLUSTER_SECRET=otel-check-secret-0123456789 "$bin" --node-id n1 \
  --listen "127.0.0.1:$http_port" --gossip-listen "127.0.0.1:$gossip_port" \
  --seeds "127.0.0.1:$gossip_port" --replication-factor 1 --data-dir "$dir/n1" \
  --otel-endpoint "http://127.0.0.1:$collector_port/v1/traces" >"$dir/n1.log" 2>&1 &
node=$!
pids+=($node)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http_port/ready" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$http_port/ready" >/dev/null || { cat "$dir/n1.log"; echo "otel-check: node not ready" >&2; exit 1; }

id=otelcheck$(date +%s%N)
curl -sf -X PUT -H "x-request-id: $id" --data-binary hello "http://127.0.0.1:$http_port/v1/kv/otel" >/dev/null
curl -sf -H "x-request-id: $id" "http://127.0.0.1:$http_port/v1/kv/otel" >/dev/null
kill -TERM "$node"
wait "$node" || true

batches=$(ls "$dir/received" | grep -c 'v1_traces-application_x-protobuf' || true)
echo "otel-check: $batches OTLP/HTTP protobuf batches received"
[ "$batches" -ge 1 ] || { cat "$dir/n1.log"; echo "otel-check: FAILED, no span batch" >&2; exit 1; }
cat "$dir"/received/* >"$dir/all"
grep -q kvnode "$dir/all" || { echo "otel-check: FAILED, no service.name kvnode" >&2; exit 1; }
grep -q "$id" "$dir/all" || { echo "otel-check: FAILED, request id $id not in any span" >&2; exit 1; }
echo "otel-check: OK, spans from service kvnode carry request id $id"
