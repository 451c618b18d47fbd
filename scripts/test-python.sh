#!/usr/bin/env bash
# Drives engine-server with the official `openai` Python client (pytest suite in
# server/tests/python). Builds nothing: it needs target/debug/engine-server
# (`cargo build -p engine-server`; $CARGO_TARGET_DIR/debug/… when that is set), or
# the binary named by $ENGINE_SERVER.
# Installs its Python packages with scripts/install-python-deps.sh. Extra
# arguments go to pytest (e.g. `-k chat`, `-x`). Fails when any test fails, and
# when no test ran at all.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
ENGINE_SERVER="${ENGINE_SERVER:-$target_dir/debug/engine-server}"
case "$ENGINE_SERVER" in /*) ;; *) ENGINE_SERVER="$PWD/$ENGINE_SERVER" ;; esac
if [ ! -x "$ENGINE_SERVER" ]; then
    echo "test-python: no engine-server binary at $ENGINE_SERVER" >&2
    echo "test-python: build it with \`cargo build -p engine-server\` or set ENGINE_SERVER" >&2
    exit 1
fi
export ENGINE_SERVER

python="$(scripts/install-python-deps.sh)"

# No __pycache__ in the source tree (server/tests/python/pytest.ini turns off
# .pytest_cache); no proxy for 127.0.0.1.
export PYTHONDONTWRITEBYTECODE=1
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

status=0
"$python" -m pytest -q server/tests/python "$@" || status=$?
# pytest exits 5 when it collected nothing; conftest.py turns "nothing passed"
# into a failure too.
if [ "$status" -ne 0 ]; then
    echo "test-python: FAILED (pytest exit status $status)" >&2
fi
exit "$status"
