# Sourced by the device scripts on the GPU machine: where the output goes,
# the staged binaries, and the repository they read fixtures from. No
# LD_LIBRARY_PATH: the engine finds the driver and cuBLAS itself (putting
# PyTorch's nvidia-* wheel folders on it left cuInit failing with
# CUDA_ERROR_STUB_LIBRARY on the H200 machine).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-/tmp/device-out}"
mkdir -p "$out"
export ENGINE_REPO_DIR="$(cd "$here/.." && pwd)"
# The staged binaries, unpacked once per staging: the machine stays warm
# between runs, so /tmp may hold an earlier staging's binaries, which are
# unpacked again when the staged archive differs (keyed by its checksum).
# Python's tarfile unpacks it where there is no xz.
bin=/tmp/engine-device-bin
staged="$(cksum <"$here/bin.tar.xz")"
if [ "$(cat "$bin/.unpacked" 2>/dev/null)" != "$staged" ]; then
    rm -rf "$bin"
    mkdir -p "$bin"
    if command -v xz >/dev/null; then
        tar -xJf "$here/bin.tar.xz" -C "$bin"
    else
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
            "$here/bin.tar.xz" "$bin"
    fi
    chmod +x "$bin"/*
    echo "$staged" >"$bin/.unpacked"
fi
# A step that runs past its share of the 8 minutes is stopped, not waited for;
# under a DEADLINE (epoch seconds, set by all.sh) it also ends 15 s before
# it, so the script's summary is still printed.
step() { # seconds log command...
    local secs="$1" log="$2"
    shift 2
    if [ -n "${DEADLINE:-}" ]; then
        local left=$((DEADLINE - $(date +%s) - 15))
        [ "$left" -lt "$secs" ] && secs=$((left > 1 ? left : 1))
    fi
    timeout -k 5 "$secs" "$@" 2>&1 | tee "$out/$log"
    return "${PIPESTATUS[0]}"
}
