# Shared by the measurement scripts (source it): a kvnode binary, wrk, and a
# 3-node cluster on loopback that is stopped when the script exits.

# kvnode_binary [PATH]: PATH, or a release build of this tree.
kvnode_binary() {
  if [ -n "${1:-}" ]; then
    echo "$1"
  else
    cargo build --release -p strata-server --bin kvnode >&2
    echo target/release/kvnode
  fi
}

# ensure_wrk: installs wrk (Debian package) if missing.
ensure_wrk() {
  command -v wrk >/dev/null && return
  echo "installing wrk (Debian package)" >&2
  apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
}

# start_cluster BINARY BASE_PORT: nodes n1..n3 on 127.0.0.1 HTTP ports
# BASE_PORT, +2, +4 (gossip on the next port of each), data in $dir (a temp
# dir this creates); fills the array pids; waits until each is ready, one
# after the other, as joins go. Everything is stopped and removed on exit.
start_cluster() {
  local bin=$1 base=$2
  dir=$(mktemp -d)
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
  export KVNODE_CLUSTER_SECRET=${KVNODE_CLUSTER_SECRET:-measurement-secret-0123456789} KVNODE_LOG=${KVNODE_LOG:-warn}
  for i in 1 2 3; do
    local port=$((base + 2 * (i - 1)))
    "$bin" --node-id "n$i" --listen "127.0.0.1:$port" --seeds "127.0.0.1:$((base + 1))" \
      --data-dir "$dir/n$i" >"$dir/n$i.log" 2>&1 &
    pids+=($!)
    until curl -sf "http://127.0.0.1:$port/ready" >/dev/null; do sleep 0.2; done
  done
}

p99() { # wrk --latency output -> its 99% line
  awk '$1 == "99%" { print $2 }'
}

write_load_lua() { # $dir/load.lua: QUORUM PUTs of 100-byte values to fresh keys, for the p99 windows
  cat >"$dir/load.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/v1/kv/load-" .. counter .. "?consistency=quorum", nil, string.rep("v", 100))
end
LUA
}
