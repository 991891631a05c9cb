#!/usr/bin/env bash
# Anti-entropy repair traffic on 3 real nodes (RF 3): writes N items at ALL,
# repairs identical replicas, then gives two replicas a newer version of
# every hundredth item that the third misses (1 % divergence) and repairs
# the third. Prints one line: body bytes of each repair (digest calls and
# streamed frames, from the kvnode_repair_*_bytes metrics of all nodes),
# the divergent bytes and the ratio, and the seconds each repair took.
#
#   scripts/repair-traffic.sh [KEYS] [VALUE_BYTES]    (default 1000000 100)
#
# The harness is the process-test one (server/tests/anti_entropy.rs,
# `repair_traffic_figures`), built in release.
set -euo pipefail
cd "$(dirname "$0")/.."
export REPAIR_TRAFFIC_KEYS=${1:-1000000} REPAIR_TRAFFIC_VALUE=${2:-100}
CARGO_INCREMENTAL=0 cargo test --release -p strata-server --test anti_entropy \
  repair_traffic_figures -- --ignored --nocapture 2>&1 | grep -E "items of|test result|panicked"
