#!/usr/bin/env bash
# On a lent 16-core machine: the CPU scenarios of the main job in --full sizes (1-1.5 s serial), 3 repetitions,
# at 1, 2, 4, 8 and 16 workers, on the machine's CPython. Results go to $OUT (or ./device-out).
set -uo pipefail
OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"
t0=$SECONDS
GILFREE_WERROR=1 python3 setup.py -q build --build-base /tmp/gilb --build-lib /tmp/gilb/lib >"$OUT/build_gil.log" 2>&1 \
    || { echo "GIL build failed"; tail -5 "$OUT/build_gil.log"; }
PYTHONPATH=/tmp/gilb/lib timeout 420 python3 -m gilfree.bench --full --repeat 3 --scenario cpu_python,cpu_native \
    --workers 1,2,4,8,16 --no-progress --json "$OUT/full16.json" --plot "$OUT/full16.png" >"$OUT/full16.txt" 2>&1
echo "rc=$?"
cat "$OUT/full16.txt"
echo "== done in $((SECONDS - t0)) s"
