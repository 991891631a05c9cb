#!/usr/bin/env bash
# One file of SIZE MiB (default 256) through a 3-node RF 3 cluster on
# loopback: upload with curl to node 1 at QUORUM, download from node 2 (into
# /dev/null, then into a file to compare the bytes: see `transfer`), and
# report MiB/s each way against `cp` of the same file, and for
# each node its peak RSS and the peaks of its two parts, sampled every 100 ms:
# anonymous memory (the heap: buffers, memtables) and file pages (mmapped
# tables, which the kernel reclaims under pressure). Then `kvnode put-file` of
# the same bytes under a new name (the chunk bytes it sends: dedup), and a
# download with node 3 killed.
#
# With --peer garage, the same file also goes through Garage (3 nodes, RF 3,
# compression off, otherwise its defaults; one S3 PUT to node 1, GET from node
# 2, with curl) in the same run, and the ratios are printed. The binary is
# $GARAGE_BIN, else `garage` on PATH (`cargo install garage --locked`); the
# script says so and measures strata alone when there is none.
#
#   scripts/files-throughput.sh [--peer garage] [SIZE_MIB] [KVNODE_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
peer=
if [ "${1:-}" = --peer ]; then
  peer=${2:?--peer needs a name: garage}
  [ "$peer" = garage ] || { echo "unknown peer: $peer (only garage)" >&2; exit 2; }
  shift 2
fi
size=${1:-256}
bin=$(kvnode_binary "${2:-}")
garage=
if [ "$peer" = garage ]; then
  garage=${GARAGE_BIN:-$(command -v garage || true)}
  if [ -z "$garage" ] || [ ! -x "$garage" ]; then
    echo "no garage binary (set GARAGE_BIN or put garage on PATH: cargo install garage --locked);" \
      "Garage NOT measured, strata alone" >&2
    garage=
  fi
fi

# A grace short enough to wait out here, long enough that the upload
# fits in its commit window (half of it, less 2.5 s).
grace_s=120
export KVNODE_FILE_GC_GRACE_MS=$((grace_s * 1000))
start_cluster "$bin" 7900
f="$dir/in.bin"
head -c "$((size << 20))" /dev/urandom >"$f"
sync

secs() { python3 -c "import time; print(time.time())"; }
rate() { python3 -c "print(f'{$size / ($2 - $1):.1f}')"; }

t0=$(secs); cp "$f" "$dir/cp.bin"; sync; t1=$(secs)
cp_rate=$(rate "$t0" "$t1")
rm -f "$dir/cp.bin"

# sample LOG PID...: in the background, "pid anon_kib file_kib" lines every
# 100 ms into LOG until killed; its pid goes into the array pids.
sample() {
  local log=$1; shift
  ( while :; do
      for pid in "$@"; do
        awk -v p="$pid" '/RssAnon/ {a=$2} /RssFile/ {f=$2} END {print p, a, f}' "/proc/$pid/status" 2>/dev/null
      done
      sleep 0.1
    done >"$log" ) &
  sampler=$!
  pids+=("$sampler")
}

# memory LOG PID...: one line per process: peaks from the kernel and LOG,
# and the bytes it has written to the disk so far.
memory() {
  local log=$1 i=0; shift
  for pid in "$@"; do
    i=$((i + 1))
    hwm=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status")
    anon=$(awk -v p="$pid" '$1 == p && $2 > m {m = $2} END {print int(m/1024)}' "$log")
    file=$(awk -v p="$pid" '$1 == p && $3 > m {m = $3} END {print int(m/1024)}' "$log")
    wrote=$(awk '/^write_bytes/ {print int($2/1048576)}' "/proc/$pid/io")
    echo "  n$i: peak RSS $hwm MiB (peak anonymous $anon MiB, peak file pages $file MiB); wrote $wrote MiB to disk"
  done
}

# transfer NAME UP_URL DOWN_URL [CURL_ARGS...]: PUT then GET of the file,
# setting up, down, down_file and same. The download is timed twice: into
# /dev/null (the server's rate: what `down` and the ratio use), and into a
# file that is then compared with the original (`down_file`). Writing 1 GiB
# into the page cache costs curl itself about 2.5 s of system CPU here, so
# the second rate is mostly curl's own and hides the server's.
transfer() {
  local name=$1 up_url=$2 down_url=$3; shift 3
  t0=$(secs)
  code=$(curl -sS "$@" -o "$dir/put.out" -w '%{http_code}' -T "$f" "$up_url") || true
  t1=$(secs)
  case $code in 200 | 201) ;; *) echo "$name upload failed: $code $(cat "$dir/put.out" 2>/dev/null)" >&2
    tail -n 5 "$dir"/*.log >&2; exit 1 ;; esac
  up=$(rate "$t0" "$t1")
  # The upload's data on its way to the disk is not the download's cost.
  sync
  t0=$(secs)
  curl -sSf "$@" -o /dev/null "$down_url" || echo "$name download failed" >&2
  t1=$(secs)
  down=$(rate "$t0" "$t1")
  t0=$(secs)
  curl -sSf "$@" -o "$dir/out.bin" "$down_url" || echo "$name download failed" >&2
  t1=$(secs)
  down_file=$(rate "$t0" "$t1")
  cmp -s "$f" "$dir/out.bin" && same=yes || same=NO
  rm -f "$dir/out.bin"
  echo "$name: bytes equal: $same; upload $up MiB/s, download $down MiB/s ($down_file MiB/s into a file)"
}

echo "file: $size MiB; cp: $cp_rate MiB/s"
strata=("${pids[@]}")
sample "$dir/rss.log" "${strata[@]}"
transfer strata "http://127.0.0.1:7900/v1/files/big?consistency=quorum" \
  "http://127.0.0.1:7902/v1/files/big?consistency=quorum"
uploaded=$(secs)
kill "$sampler"
strata_up=$up strata_down=$down strata_down_file=$down_file strata_same=$same
memory "$dir/rss.log" "${strata[@]}"

"$bin" put-file "$f" again --node 127.0.0.1:7900 2>"$dir/again.err" | tail -1 | sed 's/^/  dedup, same bytes as a new name: /'
kill -9 "${strata[2]}"
curl -sf -o "$dir/out.bin" "http://127.0.0.1:7902/v1/files/big?consistency=quorum"
cmp -s "$f" "$dir/out.bin" && killed=yes || killed=NO
rm -f "$dir/out.bin"
echo "  download with n3 killed: bytes equal: $killed"

# The chunk GC: n3 back, both files deleted, and once the grace has passed
# since the upload, one pass on each node, timed by the node.
"$bin" --node-id n3 --listen 127.0.0.1:7904 --seeds 127.0.0.1:7901 --data-dir "$dir/n3" \
  >>"$dir/n3.log" 2>&1 &
pids+=($!)
until curl -sf http://127.0.0.1:7904/ready >/dev/null; do sleep 0.2; done
curl -sSf -X DELETE "http://127.0.0.1:7900/v1/files/big?consistency=quorum"
curl -sSf -X DELETE "http://127.0.0.1:7900/v1/files/again?consistency=quorum"
python3 -c "import time; time.sleep(max(0, $uploaded + $grace_s + 1 - time.time()))"
for port in 7900 7902 7904; do
  scripts/signed-curl.sh POST "http://127.0.0.1:$port/admin/v1/files/gc" '' -sS | python3 -c "
import json, sys
r = json.load(sys.stdin)
print(f'  chunk GC on :$port: {r[\"deleted_chunks\"]} chunks ({r[\"deleted_bytes\"] / 2**20:.0f} MiB) of' +
      f' {r[\"examined_items\"]} items deleted in {r[\"seconds\"]:.2f} s' if 'seconds' in r else f'  chunk GC on :$port: {r}')"
done
kill "${strata[0]}" "${strata[1]}" "${pids[-1]}"

if [ -n "$garage" ]; then
  secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  g=()
  for i in 1 2 3; do
    base=$((7910 + 10 * i))
    mkdir -p "$dir/g$i"
    cat >"$dir/g$i.toml" <<EOF
metadata_dir = "$dir/g$i/meta"
data_dir = "$dir/g$i/data"
db_engine = "lmdb"
replication_factor = 3
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$((base + 1))"
rpc_public_addr = "127.0.0.1:$((base + 1))"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$base"
root_domain = ".s3.garage.localhost"
EOF
    RUST_LOG=warn "$garage" -c "$dir/g$i.toml" server >"$dir/g$i.log" 2>&1 &
    g+=($!)
    pids+=($!)
  done
  gar() { "$garage" -c "$dir/g1.toml" "$@"; }
  ids=()
  for i in 1 2 3; do
    until id=$("$garage" -c "$dir/g$i.toml" node id -q 2>/dev/null); do sleep 0.2; done
    ids+=("$id")
  done
  gar node connect "${ids[1]}" >/dev/null
  gar node connect "${ids[2]}" >/dev/null
  for id in "${ids[@]}"; do gar layout assign -z dc1 -c 10G "${id%@*}" >/dev/null; done
  gar layout apply --version 1 >/dev/null
  gar bucket create bench >/dev/null
  keyinfo=$(gar key create bench-key)
  key_id=$(awk '/Key ID/ {print $NF}' <<<"$keyinfo")
  key_secret=$(awk '/Secret key/ {print $NF}' <<<"$keyinfo")
  gar bucket allow --read --write bench --key bench-key >/dev/null
  sigv4=(--aws-sigv4 "aws:amz:garage:s3" --user "$key_id:$key_secret" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
  until curl -sf "${sigv4[@]}" -o /dev/null "http://127.0.0.1:7920/bench"; do sleep 0.5; done
  sample "$dir/grss.log" "${g[@]}"
  transfer garage "http://127.0.0.1:7920/bench/big" "http://127.0.0.1:7930/bench/big" "${sigv4[@]}"
  kill "$sampler"
  memory "$dir/grss.log" "${g[@]}"
  python3 -c "print(f'strata / garage: upload {$strata_up / $up:.2f}x, download {$strata_down / $down:.2f}x' +
                   f' (into a file: {$strata_down_file / $down_file:.2f}x)')"
  [ "$same" = yes ]
fi
[ "$strata_same" = yes ] && [ "$killed" = yes ]
