#!/usr/bin/env bash
# Builds every fuzz target and runs each for a few seconds: a decoder that
# panics on some input, or a target that no longer builds, fails here rather
# than in the next long fuzzing session. Installs cargo-fuzz if missing.
#
#   fuzz/smoke.sh [SECONDS_PER_TARGET]      (default 10)
#
# libFuzzer needs nightly flags; stable Rust accepts them with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-10}
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build
for target in $(cargo fuzz list); do
  # Corpora and crash artifacts go to fuzz/corpus and fuzz/artifacts (git ignores both).
  cargo fuzz run "$target" -- -max_total_time="$secs" -runs=100000000 2>&1 | tail -n 1
done
