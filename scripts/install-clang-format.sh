#!/usr/bin/env bash
# Installs clang-format from PyPI into .toolchain/clang-format, without root, and
# prints the path of the binary. Idempotent and quiet. Pinned: another version
# may format csrc/ differently (the check in scripts/check-clang-format.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$root/.toolchain/clang-format"
version="18.1.8"
if [ ! -f "$prefix/.version-$version" ]; then
    rm -rf "$prefix"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --root-user-action=ignore --target "$prefix" "clang-format==$version" >&2
    touch "$prefix/.version-$version"
fi
echo "$prefix/clang_format/data/bin/clang-format"
