#!/usr/bin/env bash
# The whole device check in one run (at most 8 minutes): kernels, then e2e.
# Every log comes back in one archive ($OUT/logs.tgz: the device tool returns
# at most 8 files).
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
# Each half has its share of the 8 minutes, so the logs always come back;
# its steps are cut short to leave time for its summary (env.sh's step).
DEADLINE=$(($(date +%s) + 260)) timeout -k 5 260 bash "$here/kernels.sh"
k=$?
DEADLINE=$(($(date +%s) + 150)) timeout -k 5 150 bash "$here/e2e.sh"
e=$?
echo "kernels.sh exit $k, e2e.sh exit $e"
tar czf /tmp/logs.tgz -C "$out" . && rm -rf "${out:?}"/* && mv /tmp/logs.tgz "$out/"
[ "$k" -eq 0 ] && [ "$e" -eq 0 ]
