#!/usr/bin/env bash
# Builds, here (no GPU needed), everything the GPU machine runs: the CUDA
# kernel tests and benches, the backend-parity test and engine-server, all
# with the `cuda` feature; strips them into DEST (default: .device-cuda/ in
# this checkout, ignored by git) with the device scripts, and prints the one
# device `run` call:
#   run(command="bash .device-cuda/all.sh", carry=[".device-cuda"], timeout_s=480)
# all.sh runs kernels.sh (tests, sanitizer, benches, peers) then e2e.sh
# (parity on CUDA, the server on the fixtures against the CPU's answers);
# each can also run alone. engine.sh (the engine end to end at Llama-3-8B's
# shape, bench/engine_shapes.rs) is a run of its own. The device tool sends
# the checkout its session started in: when this runs in another worktree,
# pass that checkout's .device-cuda as DEST.
#
# Device checks build for sm_90 only (ENGINE_CUDA_ARCHS=90, the H200), which
# halves nvcc's time; set ENGINE_CUDA_ARCHS to build others.
#
# usage: scripts/device/stage.sh [DEST]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="${1:-$root/.device-cuda}"
cd "$root"
NVCC="$(scripts/install-cuda.sh)/bin/nvcc"
export NVCC
export ENGINE_CUDA_ARCHS="${ENGINE_CUDA_ARCHS:-90}"

# One profile (dev: the engine at opt-level 1, dependencies at 3) for every
# artifact, so csrc/ and the workspace compile once; kernel timings do not
# depend on how the host code is optimized.
executable() { # cargo args...: the last executable cargo built
    cargo "$@" --features cuda --message-format=json | python3 -c 'import json,sys
last = None
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        last = m["executable"]
print(last or "")'
}
start=$(date +%s)
kernels_test="$(executable test --no-run --test cuda_kernels)"
parity_test="$(executable test --no-run --test backend_parity)"
tp_test="$(executable test --no-run --test tensor_parallel)"
kernels_bench="$(executable bench --no-run --profile dev --bench cuda_kernels)"
engine_bench="$(executable bench --no-run --profile dev --bench engine_shapes)"
server="$(executable build -p engine-server --bin engine-server)"
echo "stage: built in $(($(date +%s) - start)) s" >&2

rm -rf "$dest"
mkdir -p "$dest/bin"
cp "$kernels_test" "$dest/bin/cuda_kernels_test"
cp "$parity_test" "$dest/bin/backend_parity"
cp "$tp_test" "$dest/bin/tensor_parallel"
cp "$kernels_bench" "$dest/bin/cuda_kernels_bench"
cp "$engine_bench" "$dest/bin/engine_shapes"
cp "$server" "$dest/bin/engine-server"
strip "$dest"/bin/*
# FlashInfer's decode beside ours (FlashInfer is fetched, never committed).
scripts/device/build-flashinfer-compare.sh "$dest/bin/flashinfer_decode" >&2
# The binaries share most of their bytes (the engine and its kernels in
# each): one xz stream whose window spans several of them stores the shared
# part about once (13 MiB for 7 binaries of 177 MiB, where gzip, file by file,
# made 60 MiB of the 64 the tree may carry). env.sh unpacks it there.
tar cf - -C "$dest/bin" . | xz -9 --lzma2=preset=9,dict=192MiB -T1 >"$dest/bin.tar.xz"
rm -rf "$dest/bin"
cp scripts/device/kernels.sh scripts/device/e2e.sh scripts/device/all.sh scripts/device/engine.sh \
    scripts/device/env.sh scripts/device/e2e_requests.py bench/sdpa_compare.py \
    bench/torch_decode.py "$dest/"
size=$(du -cb "$dest" | tail -n 1 | cut -f1)
echo "staged $(du -sh "$dest" | cut -f1) in $dest ($size bytes; with the working tree, the limit is 64 MiB)" >&2
if [ "$size" -gt $((40 * 1024 * 1024)) ]; then
    echo "stage: $dest is over 40 MiB, which leaves too little for the working tree" >&2
    exit 1
fi
echo 'run(command="bash .device-cuda/all.sh", carry=[".device-cuda"], timeout_s=480)'
