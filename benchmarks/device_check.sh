#!/usr/bin/env bash
# The checks made on a lent 16-core machine, as one script (it has no network: the free-threaded CPython's
# source and the wheels its tests need travel in .devcarry/, which is git-ignored):
#   1. the free-threaded CPython built there, and the whole test suite on it with PYTHON_GIL=0 on 16 cores;
#   2. the native scaling sweep (bench_native.py, workers 1..16) on the machine's own CPython (GIL build);
#   3. the same sweep on the free-threaded build with the GIL off.
# Results go to $OUT (or ./device-out).
set -uo pipefail
OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$SECONDS
echo "== machine: $(nproc) CPUs; $(python3 --version); $(cc --version | head -1)"
echo "== [$((SECONDS - t0)) s] free-threaded CPython"
GILFREE_FT_CACHE=/tmp/ftc timeout 200 bash .devcarry/ft/build.sh >/tmp/ftpath 2>"$OUT/ft_build.log" \
    || { tail "$OUT/ft_build.log"; }
FT=$(tail -1 /tmp/ftpath)
"$FT" -m pip install -q --no-index --no-deps --no-compile --target /tmp/ftsite .devcarry/whl/*.whl >/dev/null 2>&1
PYTHONPATH=/tmp/ftsite GILFREE_WERROR=1 "$FT" setup.py -q build --build-base /tmp/ftb --build-lib /tmp/ftb/lib \
    >"$OUT/build_ft.log" 2>&1 || { echo "FT build failed"; tail "$OUT/build_ft.log"; }
echo "== [$((SECONDS - t0)) s] test suite, free-threaded, PYTHON_GIL=0"
PYTHON_GIL=0 PYTHONPATH=/tmp/ftb/lib:/tmp/ftsite timeout 220 "$FT" -m pytest -q -p no:cacheprovider --timeout 100 \
    -rfE tests >"$OUT/ft_tests.txt" 2>&1
tail -15 "$OUT/ft_tests.txt"
echo "== [$((SECONDS - t0)) s] native scaling, GIL build ($(python3 --version))"
python3 setup.py -q build_ext --inplace >"$OUT/build_gil.log" 2>&1 || { echo "GIL build failed"; tail -5 "$OUT/build_gil.log"; }
PYTHONPATH=python timeout 110 python3 benchmarks/bench_native.py --repeat 3 --workers 1,2,4,8,16 \
    --json "$OUT/native_gil.json" >"$OUT/native_gil.txt" 2>&1
tail -28 "$OUT/native_gil.txt"
rm -f python/gilfree/_core*.so
echo "== [$((SECONDS - t0)) s] native scaling, free-threaded, PYTHON_GIL=0"
PYTHON_GIL=0 PYTHONPATH=/tmp/ftb/lib timeout 90 "$FT" benchmarks/bench_native.py --repeat 3 --workers 1,2,4,8,16 \
    --json "$OUT/native_ft.json" >"$OUT/native_ft.txt" 2>&1
tail -28 "$OUT/native_ft.txt"
echo "== done in $((SECONDS - t0)) s"
