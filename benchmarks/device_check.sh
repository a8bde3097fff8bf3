#!/usr/bin/env bash
# The checks made on a lent 16-core machine, as one script (it has no network: the free-threaded CPython's
# source and the wheels its tests need travel in .devcarry/, which is git-ignored):
#   1. the free-threaded CPython built there, and gilfree built for it and for the machine's CPython;
#   2. the whole test suite on the free-threaded build with PYTHON_GIL=0, on 16 cores;
#   3. the main job at 1, 2, 4, 8 and 16 workers on the machine's CPython (GIL build) with the free-threaded
#      build's columns merged in (--python), table, JSON and plot.
# Results go to $OUT (or ./device-out).
set -uo pipefail
OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$SECONDS
MODE="${GILFREE_DEVICE_BENCH_MODE:---quick}"
echo "== machine: $(nproc) CPUs; $(python3 --version); $(cc --version | head -1)"
echo "== [$((SECONDS - t0)) s] free-threaded CPython"
GILFREE_FT_CACHE=/tmp/ftc timeout 200 bash .devcarry/ft/build.sh >/tmp/ftpath 2>"$OUT/ft_build.log" \
    || { tail "$OUT/ft_build.log"; }
FT=$(tail -1 /tmp/ftpath)
"$FT" -m pip install -q --no-index --no-deps --no-compile --target /tmp/ftsite .devcarry/whl/*.whl >/dev/null 2>&1
PYTHONPATH=/tmp/ftsite GILFREE_WERROR=1 "$FT" setup.py -q build --build-base /tmp/ftb --build-lib /tmp/ftb/lib \
    >"$OUT/build_ft.log" 2>&1 || { echo "FT build failed"; tail "$OUT/build_ft.log"; }
GILFREE_WERROR=1 python3 setup.py -q build --build-base /tmp/gilb --build-lib /tmp/gilb/lib \
    >"$OUT/build_gil.log" 2>&1 || { echo "GIL build failed"; tail -5 "$OUT/build_gil.log"; }
cp /tmp/ftb/lib/gilfree/_core.*.so /tmp/gilb/lib/gilfree/  # one PYTHONPATH serves both interpreters
echo "== [$((SECONDS - t0)) s] test suite, free-threaded, PYTHON_GIL=0"
PYTHON_GIL=0 PYTHONPATH=/tmp/ftb/lib:/tmp/ftsite timeout 240 "$FT" -m pytest -q -p no:cacheprovider --timeout 100 \
    -rfE tests >"$OUT/ft_tests.txt" 2>&1
tail -15 "$OUT/ft_tests.txt"
echo "== [$((SECONDS - t0)) s] main job $MODE, workers 1..16, $(python3 --version) + free-threaded (GIL off)"
PYTHONPATH=/tmp/gilb/lib timeout 330 python3 -m gilfree.bench "$MODE" --workers 1,2,4,8,16 --python "$FT" \
    --no-progress --json "$OUT/bench16.json" --plot "$OUT/bench16.png" >"$OUT/bench16.txt" 2>"$OUT/bench16.err"
echo "rc=$?"
cat "$OUT/bench16.txt"
tail -5 "$OUT/bench16.err"
echo "== done in $((SECONDS - t0)) s"
