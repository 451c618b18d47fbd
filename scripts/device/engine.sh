#!/usr/bin/env bash
# On the GPU machine: the engine end to end at Llama-3-8B's shape (random
# weights, bf16): batch-1 decode against the weight-bytes / copy-bandwidth
# roofline, decode throughput at batch 64-256 and context 1k/4k, and 512
# requests of 512 + 256 tokens (bench/engine_shapes.rs), after the same
# decode cells in torch (bench/torch_decode.py: bf16, SDPA, CUDA graphs). One
# run of at most 8 minutes; the tables are printed last. Run alone:
#   run(command="bash .device-cuda/engine.sh", carry=[".device-cuda"], timeout_s=480)
# FP8=1 and/or GRAPHS=1: the projections in FP8 (--quantization fp8), decode
# through CUDA graphs; quick cells, no torch (compare with the plain run's
# rows: the FP8 target is >= 1.7x the bf16 batch-1 tokens/s).
source "$(cd "$(dirname "$0")" && pwd)/env.sh"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
variant=()
[ "${FP8:-0}" = 1 ] && variant+=(--fp8)
[ "${GRAPHS:-0}" = 1 ] && variant+=(--graphs)
if [ "${#variant[@]}" -gt 0 ]; then
    step 300 engine.log "$bin/engine_shapes" --bench --device cuda --shape "${SHAPE:-llama3-8b}" \
        --quick "${variant[@]}"
    rc=$?
    echo "== engine_shapes --quick ${variant[*]} (exit $rc)"
    grep -E '^\||roofline|loaded in' "$out/engine.log"
    exit "$rc"
fi
# The torch reference first (a minute or two), then ours.
PYTHONUNBUFFERED=1 step 100 torch.log python3 "$here/torch_decode.py" "${SHAPE:-llama3-8b}"
step 340 engine.log "$bin/engine_shapes" --bench --device cuda --shape "${SHAPE:-llama3-8b}"
rc=$?
echo
echo "== torch reference (bf16, SDPA, CUDA graphs)"
grep -E '^\||^torch' "$out/torch.log"
echo "== engine_shapes (exit $rc)"
grep -E '^\||roofline|loaded in' "$out/engine.log"
exit "$rc"
