#!/usr/bin/env bash
# The test command from the README: sets up, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# libclang, for the test that regenerates the server's C ABI bindings and diffs them.
LIBCLANG_PATH="$(scripts/install-libclang.sh)"
export LIBCLANG_PATH
cargo test --workspace
# The server driven by the official openai Python client (needs the binary the
# tests above built).
scripts/test-python.sh
# Benches must keep compiling (they run on demand: see bench/RESULTS.md).
cargo check --workspace --benches
