# Sourced by the device scripts on the GPU machine: where the output goes,
# where cuBLAS is, and the repository the staged binaries read fixtures from.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-/tmp/device-out}"
mkdir -p "$out"
export ENGINE_REPO_DIR="$(cd "$here/.." && pwd)"
# cuBLAS on LD_LIBRARY_PATH (the toolkit's, or PyTorch's wheels'); the
# engine finds it without this too, which the server check relies on.
with_cublas_path() {
    local libs
    libs=$(find /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib \
        $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) \
        -name 'libcublas.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
}
# A step that runs past its share of the 8 minutes is stopped, not waited for.
step() { # seconds log command...
    local secs="$1" log="$2"
    shift 2
    timeout -k 5 "$secs" "$@" 2>&1 | tee "$out/$log"
    return "${PIPESTATUS[0]}"
}
