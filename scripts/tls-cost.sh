#!/usr/bin/env bash
# What TLS costs a node: one node served plain, then HTTPS (same binary,
# same data dir layout), under the same wrk load (keep-alive connections,
# 16 of them, GET of one key and PUT of 100-byte values), and the TLS
# handshake per new connection (curl: TLS done minus TCP connected, over
# fresh connections, median of N).
#
#   scripts/tls-cost.sh [KVNODE_BINARY] [SECONDS]
#
# Prints one line per figure. Internode mutual TLS is measured by
# `benches/cluster --tls` instead: a node with --tls-client-ca requires
# client certificates, which wrk cannot present.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
bin=$(kvnode_binary "${1:-}")
secs=${2:-10}
ensure_wrk
dir=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bin" cert create-ca --dir "$dir/pki" >/dev/null 2>&1
"$bin" cert create-node node --host 127.0.0.1 --dir "$dir/pki" >/dev/null 2>&1
cat >"$dir/put.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/v1/kv/tls-" .. counter, nil, string.rep("v", 100))
end
LUA
port=7790

# run_node SCHEME [FLAGS...]: a node of one on $port, ready.
run_node() {
  local scheme=$1
  shift
  [ -n "$pid" ] && { kill "$pid"; wait "$pid" 2>/dev/null || true; }
  rm -rf "$dir/data"
  KVNODE_LOG=warn "$bin" --listen "127.0.0.1:$port" --replication-factor 1 --data-dir "$dir/data" \
    "$@" >"$dir/node.log" 2>&1 &
  pid=$!
  until curl -sf --cacert "$dir/pki/ca.crt" "$scheme://127.0.0.1:$port/ready" >/dev/null; do sleep 0.2; done
  curl -sf --cacert "$dir/pki/ca.crt" -X PUT --data-binary hello "$scheme://127.0.0.1:$port/v1/kv/hot" >/dev/null
}

rps() { # URL [wrk args]: requests/s
  local url=$1
  shift
  wrk -t2 -c16 -d"${secs}s" "$@" "$url" | awk '/Requests\/sec/ { print $2 }'
}

handshake_ms() { # median of (appconnect - connect) over 200 new connections, ms
  for _ in $(seq 200); do
    curl -s -o /dev/null --cacert "$dir/pki/ca.crt" -w '%{time_connect} %{time_appconnect}\n' \
      "https://127.0.0.1:$port/health"
  done | awk '{ print ($2 - $1) * 1000 }' | sort -n | awk '{ v[NR] = $1 } END { printf "%.2f\n", v[int(NR / 2) + 1] }'
}

run_node http
plain_get=$(rps "http://127.0.0.1:$port/v1/kv/hot")
plain_put=$(rps "http://127.0.0.1:$port" -s "$dir/put.lua")
run_node https --tls-cert "$dir/pki/node.crt" --tls-key "$dir/pki/node.key"
tls_get=$(rps "https://127.0.0.1:$port/v1/kv/hot")
tls_put=$(rps "https://127.0.0.1:$port" -s "$dir/put.lua")
hs=$(handshake_ms)
echo "1 node GET: plain ${plain_get}/s, https ${tls_get}/s, ratio $(awk -v a="$tls_get" -v b="$plain_get" 'BEGIN { printf "%.2f", a / b }')"
echo "1 node PUT: plain ${plain_put}/s, https ${tls_put}/s, ratio $(awk -v a="$tls_put" -v b="$plain_put" 'BEGIN { printf "%.2f", a / b }')"
echo "TLS handshake per new connection (curl, median of 200): ${hs} ms"
