#!/usr/bin/env bash
# On the GPU machine: every CUDA kernel test, compute-sanitizer (memcheck on
# the attention, cache, FP8 and norm tests; racecheck on attention), every kernel
# bench with GB/s against the copy bandwidth measured in the same run, and
# the paged-decode shape beside torch's SDPA. Logs in $OUT; a table last.
source "$(cd "$(dirname "$0")" && pwd)/env.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$out/gpu.txt"
rows=()
row() { rows+=("| $1 | $2 |"); }

echo "== kernel tests"
ENGINE_REQUIRE_GPU=1 step 60 tests.log "$bin/cuda_kernels_test" --test-threads=1
rc=$?
row "kernel tests" "exit $rc: $(grep -h '^test result' "$out/tests.log" | head -n 1)"
status=$rc

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
for tool in memcheck racecheck; do
    if [ -z "$sanitizer" ]; then
        row "sanitizer $tool" "compute-sanitizer not found"
        continue
    fi
    if [ "$tool" = memcheck ]; then
        filters=(rms_norm reshape_and_cache paged_attention rotary silu fp8)
    else
        filters=(paged_attention rms_norm)
    fi
    echo "== compute-sanitizer --tool $tool"
    ENGINE_REQUIRE_GPU=1 step 75 "sanitizer-$tool.log" "$sanitizer" --tool "$tool" \
        --error-exitcode 3 "$bin/cuda_kernels_test" --test-threads=1 "${filters[@]}"
    rc=$?
    summary=$(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY\|not supported' "$out/sanitizer-$tool.log" | tail -n 1)
    row "sanitizer $tool" "exit $rc: ${summary:-no summary}"
    [ "$rc" -eq 0 ] || status=1
done

echo "== kernel benches"
CARGO_TARGET_DIR=/tmp/criterion-target step 180 bench.log "$bin/cuda_kernels_bench" --bench cuda/
copy=$(sed -n 's/.*% of copy (\([0-9.]*\) GB\/s).*/\1/p' "$out/bench.log" | head -n 1)
echo "== torch sdpa"
PYTHONUNBUFFERED=1 step 30 sdpa.log python3 "$here/sdpa_compare.py" "${copy:-0}"
echo "== flashinfer decode beside ours"
step 30 flashinfer.log "$bin/flashinfer_decode" "${copy:-0}"
rc=$?
row "flashinfer vs ours" "exit $rc"
[ "$rc" -eq 0 ] || status=1

echo
echo "== kernels summary ($(cat "$out/gpu.txt"))"
printf '%s\n' "${rows[@]}"
grep -h 'FAILED\|panicked' "$out/tests.log" | head -n 10
sed -n '/^| kernel/,$p' "$out/bench.log"
grep -h '^| torch' "$out/sdpa.log"
grep -h '^|' "$out/flashinfer.log"
exit "$status"
