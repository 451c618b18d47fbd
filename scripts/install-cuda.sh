#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler and runtime from PyPI wheels into
# .toolchain/cuda (no root, no GPU needed), installs libclang for bindgen
# (scripts/install-libclang.sh), and prints the CUDA prefix: nvcc is at
# <prefix>/bin/nvcc, libcudart_static.a under <prefix>/lib. Idempotent and quiet.
# 13.0.x is pinned because the GPU machines run driver 580 (CUDA 13.0).
# Only the `cuda` feature needs this; the default build never does.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="$root/.toolchain/cuda"
wheels=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)
stamp="$target/.installed-$(echo "${wheels[*]}" | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
    rm -rf "$target"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --root-user-action=ignore --no-deps --target "$target" "${wheels[@]}" >&2
    touch "$stamp"
fi
prefix="$target/nvidia/cu13"
if [ ! -x "$prefix/bin/nvcc" ]; then
    echo "install-cuda: no nvcc at $prefix/bin/nvcc after installing ${wheels[*]}" >&2
    exit 1
fi
"$root/scripts/install-libclang.sh" >/dev/null
echo "$prefix"
