#!/usr/bin/env bash
# The whole device check in one run (at most 8 minutes): kernels, then e2e.
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/kernels.sh"
k=$?
bash "$here/e2e.sh"
e=$?
echo "kernels.sh exit $k, e2e.sh exit $e"
[ "$k" -eq 0 ] && [ "$e" -eq 0 ]
