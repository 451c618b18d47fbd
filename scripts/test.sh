#!/usr/bin/env bash
# The test command from the README: sets up, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test
# Benches must keep compiling (they run on demand: see bench/RESULTS.md).
cargo check --benches
