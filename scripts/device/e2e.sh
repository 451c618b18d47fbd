#!/usr/bin/env bash
# On the GPU machine: the backend-parity test on CUDA (then its logits test
# again with ENGINE_CUDA_SYNC=1), tensor parallel size 1 through NCCL, and engine-server --device cuda on the
# fixtures answering what engine-server --device cpu answers. Logs in $OUT.
source "$(cd "$(dirname "$0")" && pwd)/env.sh"
rows=()
row() { rows+=("| $1 | $2 |"); }
status=0

echo "== backend parity on cuda"
ENGINE_PARITY_BACKEND=cuda step 100 parity.log "$bin/backend_parity" --nocapture
rc=$?
row "parity (cuda vs cpu)" "exit $rc: $(grep -h '^test result' "$out/parity.log" | head -n 1)"
[ "$rc" -eq 0 ] || status=1

echo "== backend parity, logits, ENGINE_CUDA_SYNC=1"
ENGINE_CUDA_SYNC=1 ENGINE_PARITY_BACKEND=cuda step 45 parity-sync.log \
    "$bin/backend_parity" teacher_forced --nocapture
rc=$?
row "parity logits, synced" "exit $rc: $(grep -h '^test result' "$out/parity-sync.log" | head -n 1)"
[ "$rc" -eq 0 ] || status=1

echo "== tensor parallel size 1 on cuda, through NCCL (libnccl from the nvidia-nccl wheel)"
ENGINE_TP_CUDA=1 step 60 tp-nccl.log "$bin/tensor_parallel" cuda_tp1 --nocapture
rc=$?
row "cuda -tp 1 via NCCL = cpu" "exit $rc: $(grep -h '^test result' "$out/tp-nccl.log" | head -n 1)"
[ "$rc" -eq 0 ] || status=1

echo "== engine-server --device cuda against --device cpu "
PYTHONUNBUFFERED=1 step 60 server.log python3 "$here/e2e_requests.py" "$bin/engine-server" \
    "$ENGINE_REPO_DIR/tests/fixtures" "$out"
rc=$?
row "server cuda = cpu" "exit $rc"
[ "$rc" -eq 0 ] || status=1

echo
echo "== e2e summary"
printf '%s\n' "${rows[@]}"
grep -h 'worst relative L2' "$out/parity.log" | head -n 8
grep -h 'graphs captured' "$out/parity.log" | head -n 8
grep -h 'worst relative L2' "$out/tp-nccl.log" | head -n 4
grep -h 'panicked\|FAILED' "$out/parity.log" "$out/parity-sync.log" "$out/tp-nccl.log" | head -n 10
grep -h '^|' "$out/server.log"
exit "$status"
