#!/usr/bin/env bash
# Installs libclang (for bindgen) from PyPI into .toolchain/libclang, without root,
# and prints the directory to use as LIBCLANG_PATH. Idempotent and quiet.
# Only the binding checks need it (server/tests/bindings.rs, and the CUDA build's
# csrc/kernels.h bindings); the default build never does.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$root/.toolchain/libclang"
version="18.1.1"
if [ ! -f "$prefix/.version-$version" ]; then
    rm -rf "$prefix"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --root-user-action=ignore --target "$prefix" "libclang==$version" >&2
    touch "$prefix/.version-$version"
fi
echo "$prefix/clang/native"
