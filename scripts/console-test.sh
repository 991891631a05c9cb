#!/usr/bin/env bash
# The web console in a real headless browser: scripts/console_test.py starts
# a 3-node cluster of release kvnode processes on loopback, loads /ui in
# Chromium through ChromeDriver, sees 3 nodes UN, kills one and sees it DN,
# puts a key through the page and reads it back with curl.
#
#   scripts/console-test.sh [--screenshots DIR] [KVNODE_BINARY]
#
# Installs what it lacks: Debian's chromium and chromium-driver (as root,
# with apt-get) and selenium from PyPI. When the browser cannot be had, it
# says so and exits 0 without testing: it is kept out of `cargo test`
# because CI has no browser. DIR (docs/ for the committed ones) gets
# console.png and console-node-down.png. KVNODE_BINARY defaults to a release
# build of this tree. Ports are picked free on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

skip() {
  echo "SKIPPED: the console browser test did not run: $*" >&2
  exit 0
}

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium and chromium-driver (Debian packages)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 || true
  fi
  command -v chromium >/dev/null && command -v chromedriver >/dev/null ||
    skip "no chromium and chromedriver on PATH, and they could not be installed (Debian: apt-get install chromium chromium-driver)"
fi
if ! python3 -c 'import selenium' 2>/dev/null; then
  echo "installing selenium (PyPI)" >&2
  python3 -m pip install --quiet 'selenium>=4.11,<5' >/dev/null 2>&1 ||
    skip "python3 has no selenium and pip could not install it (pip install selenium)"
fi

screenshots=()
if [ "${1:-}" = "--screenshots" ]; then
  mkdir -p "$2"
  screenshots=(--screenshots "$2")
  shift 2
fi
bin=$(kvnode_binary "${1:-}")
exec python3 scripts/console_test.py --kvnode "$bin" "${screenshots[@]}"
