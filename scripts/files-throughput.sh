#!/usr/bin/env bash
# One file of SIZE MiB (default 256) through a 3-node RF 3 cluster: upload
# with curl to node 1, download from node 2, compare the bytes, and report
# MiB/s each way against `cp` of the same file, and for each node its peak
# RSS (VmHWM) and the peaks of its two parts, sampled every 100 ms: anonymous
# memory (the heap: buffers, memtables) and file pages (mmapped tables, which
# the kernel reclaims under pressure).
#
#   scripts/files-throughput.sh [SIZE_MIB] [KVNODE_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
size=${1:-256}
bin=$(kvnode_binary "${2:-}")
start_cluster "$bin" 7900
f="$dir/in.bin"
head -c "$((size << 20))" /dev/urandom >"$f"
sync

secs() { python3 -c "import time; print(time.time())"; }
rate() { python3 -c "print(f'{$size / ($2 - $1):.1f}')"; }

t0=$(secs); cp "$f" "$dir/cp.bin"; sync; t1=$(secs)
cp_rate=$(rate "$t0" "$t1")
rm -f "$dir/cp.bin"

# Samples "pid anon_kib file_kib" lines until the run ends.
( while :; do
    for pid in "${pids[@]}"; do
      awk -v p="$pid" '/RssAnon/ {a=$2} /RssFile/ {f=$2} END {print p, a, f}' "/proc/$pid/status" 2>/dev/null
    done
    sleep 0.1
  done >"$dir/rss.log" ) &
sampler=$!
pids+=("$sampler")

t0=$(secs)
code=$(curl -s -o "$dir/put.json" -w '%{http_code}' -T "$f" "http://127.0.0.1:7900/v1/files/big?consistency=quorum")
t1=$(secs)
[ "$code" = 201 ] || { echo "upload failed: $code $(cat "$dir/put.json")" >&2; exit 1; }
up=$(rate "$t0" "$t1")

t0=$(secs)
curl -sf -o "$dir/out.bin" "http://127.0.0.1:7902/v1/files/big?consistency=one"
t1=$(secs)
down=$(rate "$t0" "$t1")
cmp -s "$f" "$dir/out.bin" && same=yes || same=NO

echo "file: $size MiB, bytes equal: $same"
echo "upload:   $up MiB/s"
echo "download: $down MiB/s"
echo "cp:       $cp_rate MiB/s"
kill "$sampler"
for i in 0 1 2; do
  pid=${pids[$i]}
  hwm=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status")
  rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status")
  anon=$(awk -v p="$pid" '$1 == p && $2 > m {m = $2} END {print int(m/1024)}' "$dir/rss.log")
  file=$(awk -v p="$pid" '$1 == p && $3 > m {m = $3} END {print int(m/1024)}' "$dir/rss.log")
  echo "n$((i + 1)): peak RSS $hwm MiB (peak anonymous $anon MiB, peak file pages $file MiB), RSS now $rss MiB"
done
[ "$same" = yes ]
