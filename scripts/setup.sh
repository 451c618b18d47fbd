#!/usr/bin/env bash
# Installs what building and testing need on a fresh machine. The CPU build needs
# only a Rust toolchain (cargo) and a C compiler (for the oniguruma regex library
# inside the tokenizers crate); the C ABI tests (tests/c_abi.rs) also compile C++
# and run valgrind when it is there. These are checked here, installed when missing.
set -euo pipefail

if ! command -v cc >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1; then
    echo "setup: installing C and C++ compilers" >&2
    apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: no cargo on PATH; install Rust (https://rustup.rs) and run again" >&2
    exit 1
fi
