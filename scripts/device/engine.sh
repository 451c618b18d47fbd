#!/usr/bin/env bash
# On the GPU machine: the engine end to end at Llama-3-8B's shape (random
# weights, bf16): batch-1 decode against the weight-bytes / copy-bandwidth
# roofline, decode throughput at batch 64-256 and context 1k/4k, and 512
# requests of 512 + 256 tokens (bench/engine_shapes.rs). One run of at most
# 7 minutes; the table is printed last. Run alone:
#   run(command="bash .device-cuda/engine.sh", carry=[".device-cuda"], timeout_s=480)
source "$(cd "$(dirname "$0")" && pwd)/env.sh"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
step 420 engine.log "$bin/engine_shapes" --bench --device cuda --shape "${SHAPE:-llama3-8b}"
rc=$?
echo
echo "== engine_shapes (exit $rc)"
grep -E '^\||roofline|loaded in' "$out/engine.log"
exit "$rc"
