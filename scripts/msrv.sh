#!/usr/bin/env bash
# Checks that the published libraries (strata-engine, strata-ring and the
# strata-kv facade) build on the workspace's declared `rust-version`,
# installing that toolchain with rustup when it is missing. kvnode is a
# binary built by the project's own toolchain, so it is not held to it.
set -euo pipefail
cd "$(dirname "$0")/.."
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
if [ -z "$msrv" ]; then
    echo "msrv.sh: no rust-version in Cargo.toml" >&2
    exit 1
fi
if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
    rustup toolchain install "$msrv" --profile minimal
fi
cargo "+$msrv" check --locked -p strata-engine -p strata-ring -p strata-kv --all-targets
