#!/usr/bin/env bash
# Creates the Python virtual environment that the OpenAI-client tests
# (server/tests/python, run by scripts/test-python.sh) use: .toolchain/venv with
# pinned `openai`, `pytest` and `prometheus-client` (its parsers read /metrics
# as vLLM's users do). Idempotent and quiet: does nothing when the venv
# already holds these versions. Prints the venv's python path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.toolchain/venv"
openai_version="3.57.0"
pytest_version="9.2.0"
prometheus_version="0.26.0"
stamp="$venv/.installed-openai-$openai_version-pytest-$pytest_version-prometheus-$prometheus_version"
if [ ! -f "$stamp" ] || [ ! -x "$venv/bin/python" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-warn-script-location --root-user-action=ignore \
        "openai==$openai_version" "pytest==$pytest_version" \
        "prometheus-client==$prometheus_version" >&2
    touch "$stamp"
fi
echo "$venv/bin/python"
