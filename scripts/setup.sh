#!/usr/bin/env bash
# Installs what building and testing need on a fresh machine. The CPU build needs
# only a Rust toolchain (cargo) and a C compiler (for the oniguruma regex library
# inside the tokenizers crate); the C ABI tests (tests/c_abi.rs) also compile C++,
# use pkg-config and CMake, and run valgrind when it is there. These are checked
# here, installed when missing.
set -euo pipefail

# The C library's tests build against an installed prefix with pkg-config and CMake.
missing=()
command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
# scripts/install-lib.sh strips and relinks with these; the tests read symbols with them.
for tool in nm objcopy objdump; do
    command -v $tool >/dev/null 2>&1 || { missing+=(binutils) && break; }
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: no cargo on PATH; install Rust (https://rustup.rs) and run again" >&2
    exit 1
fi

# The demo model (SmolLM2-135M-Instruct, GGUF) the server serves by default and
# tests/gguf_reference.rs checks; cached, so this downloads once.
"$(dirname "$0")/fetch-demo-model.sh" >/dev/null
