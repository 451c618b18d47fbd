#!/usr/bin/env bash
# Builds the CUDA kernel tests and benches here (no GPU needed) and stages
# them, stripped, with a runner in DEST (default: .device-cuda/ in this
# checkout, ignored by git), then prints the one device `run` call that runs
# every kernel test and bench on the GPU machine and prints a short table:
#   run(command="bash .device-cuda/run.sh", carry=[".device-cuda"])
# The device tool sends the checkout its session started in: when this runs
# in another worktree, pass that checkout's .device-cuda as DEST.
#
# usage: scripts/device-check.sh [DEST]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/.device-cuda}"
cd "$root"
NVCC="$(scripts/install-cuda.sh)/bin/nvcc"
export NVCC

executables() { # cargo args...: the executables cargo built, one per line
    cargo "$@" --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])'
}
cargo test --features cuda --test cuda_kernels --no-run >&2
cargo bench --features cuda --bench cuda_kernels --no-run >&2
test_bin="$(executables test --features cuda --test cuda_kernels --no-run | tail -n 1)"
bench_bin="$(executables bench --features cuda --bench cuda_kernels --no-run | tail -n 1)"

rm -rf "$dest"
mkdir -p "$dest"
cp "$test_bin" "$dest/cuda_kernels_test"
cp "$bench_bin" "$dest/cuda_kernels_bench"
strip "$dest/cuda_kernels_test" "$dest/cuda_kernels_bench"
cp bench/sdpa_compare.py "$dest/"
cat > "$dest/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine: every CUDA kernel test, then the kernel benches
# and torch's SDPA on the decode shape, then a short table.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-/tmp/device-out}"
mkdir -p "$out"
# cuBLAS for cudarc: the toolkit's or the one PyTorch's wheels bring.
libs=$(find /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib \
    $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) \
    -name 'libcublas.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$out/gpu.txt"
echo "== tests"
ENGINE_REQUIRE_GPU=1 "$here/cuda_kernels_test" --test-threads=1 2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}
echo "== benches"
CARGO_TARGET_DIR=/tmp/criterion-target "$here/cuda_kernels_bench" --bench cuda/ 2>&1 | tee "$out/bench.log"
copy=$(sed -n 's/.*% of copy (\([0-9.]*\) GB\/s).*/\1/p' "$out/bench.log" | head -n 1)
echo "== torch sdpa"
PYTHONUNBUFFERED=1 python3 "$here/sdpa_compare.py" "${copy:-0}" 2>&1 | tee "$out/sdpa.log"
echo
echo "== summary ($(cat "$out/gpu.txt"))"
grep -E '^test result|FAILED|panicked' "$out/tests.log" | head -n 20
sed -n '/^| kernel/,$p' "$out/bench.log"
grep '^| torch' "$out/sdpa.log"
exit "$tests_rc"
RUN
chmod +x "$dest/run.sh"
size=$(du -cb "$dest"/* | tail -n 1 | cut -f1)
echo "staged $(du -sh "$dest" | cut -f1) in $dest ($size bytes; the limit is 64 MiB)" >&2
if [ "$size" -gt $((64 * 1024 * 1024)) ]; then
    echo "device-check: $dest is over 64 MiB" >&2
    exit 1
fi
echo 'run(command="bash .device-cuda/run.sh", carry=[".device-cuda"], timeout_s=600)'
