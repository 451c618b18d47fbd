#!/usr/bin/env bash
# Fails when csrc/ (the CUDA kernels and kernels.h) is not formatted by
# .clang-format; with --fix, formats it instead. clang-format comes pinned from
# PyPI through scripts/install-clang-format.sh (another version formats differently).
# usage: scripts/check-clang-format.sh [--fix]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
clang_format="$(scripts/install-clang-format.sh)"
mapfile -t files < <(git ls-files -co --exclude-standard -- 'csrc/*.cu' 'csrc/*.cuh' 'csrc/*.h')
if [ "${1:-}" = "--fix" ]; then
    "$clang_format" -i "${files[@]}"
else
    "$clang_format" --dry-run --Werror "${files[@]}"
fi
