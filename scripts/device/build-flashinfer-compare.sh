#!/usr/bin/env bash
# Builds bench/flashinfer_decode.cu, our paged-attention decode (csrc/attention/decode.cu)
# beside FlashInfer's BatchDecodeWithPagedKVCache on one shape, into one sm_90
# binary with cudart linked statically, to carry to the GPU machine and run
# there as `flashinfer_decode [copy_GBps]`. No GPU needed here.
# FlashInfer's header-only kernels are fetched at build time from the
# flashinfer-python wheel into .toolchain/flashinfer (git-ignored): never commit them.
# usage: scripts/device/build-flashinfer-compare.sh [OUT_BINARY]
#        (default .device-cuda/flashinfer_decode)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/.device-cuda/flashinfer_decode}"
version=0.7.4
prefix="$("$root/scripts/install-cuda.sh")"

fi_dir="$root/.toolchain/flashinfer"
wheel="$fi_dir/flashinfer_python-$version-py3-none-any.whl"
data="$fi_dir/$version/flashinfer/data"
if [ ! -f "$data/.extracted" ]; then
    mkdir -p "$fi_dir"
    if [ ! -f "$wheel" ]; then
        python3 -m pip download --quiet --disable-pip-version-check --no-deps \
            "flashinfer-python==$version" -d "$fi_dir" >&2
    fi
    # Only its headers and the CCCL it vendors (newer than CUDA 13.0's; its
    # JIT puts it ahead of the toolkit's, as here).
    python3 - "$wheel" "$fi_dir/$version" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1:]
keep = ("flashinfer/data/include/flashinfer/", "flashinfer/data/cccl/")
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith(keep)])
PY
    touch "$data/.extracted"
fi
fi_inc=(-I"$data/cccl/cub" -I"$data/cccl/libcudacxx/include" -I"$data/cccl/thrust" -I"$data/include")

mkdir -p "$(dirname "$out")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
nvcc="$prefix/bin/nvcc"
arch=(-gencode=arch=compute_90,code=sm_90)
common=("${arch[@]}" -std=c++17 -O3 --expt-relaxed-constexpr)
start=$SECONDS
# Ours with build.rs's flags; the harness and FlashInfer with FlashInfer's JIT flags.
"$nvcc" "${common[@]}" -I"$root/csrc" -c "$root/csrc/attention/decode.cu" -o "$tmp/attention.o"
"$nvcc" "${common[@]}" -use_fast_math -DNDEBUG -DFLASHINFER_ENABLE_F16 -DFLASHINFER_ENABLE_BF16 \
    "${fi_inc[@]}" -I"$root/csrc" -c "$root/bench/flashinfer_decode.cu" -o "$tmp/flashinfer_decode.o"
"$nvcc" "${arch[@]}" -cudart static -L"$prefix/lib" "$tmp/attention.o" "$tmp/flashinfer_decode.o" -o "$out"
echo "built $out: $(stat -c %s "$out") bytes in $((SECONDS - start)) s"
