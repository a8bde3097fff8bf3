#!/usr/bin/env bash
# Channel tuning on a lent 16-core machine, as one script (no network there: the free-threaded CPython's
# source, the wheels its tests need and the baseline's sources travel in .devcarry/, which is git-ignored;
# .devcarry/base is the tree before the lock-free ring):
#   1. the free-threaded CPython built there; gilfree built for it and for the machine's CPython, in
#      variants: base (before the ring), cur (this tree), park5 (-DGF_SPIN_NS=5000: a parked waiter spins
#      5 us instead of 20), nospin (-DGF_RING_SPIN_NS=0: no spin on the ring before parking);
#   2. benchmarks/ab_channel.py over the variants, GIL build and free-threaded with PYTHON_GIL=0;
#   3. the channel, select, asyncio, stress and process tests on the free-threaded build, 16 cores.
# Results go to $OUT (or ./device-out).
set -uo pipefail
OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT" /tmp/b
export PYTHONUNBUFFERED=1
t0=$SECONDS
echo "== machine: $(nproc) CPUs; $(python3 --version); $(cc --version | head -1)"
GILFREE_FT_CACHE=/tmp/ftc timeout 240 bash .devcarry/ft/build.sh >/tmp/ftpath 2>"$OUT/ft_build.log" \
    || { tail "$OUT/ft_build.log"; }
FT=$(tail -1 /tmp/ftpath)
"$FT" -m pip install -q --no-index --no-deps --no-compile --target /tmp/ftsite .devcarry/whl/*.whl >/dev/null 2>&1
echo "== [$((SECONDS - t0)) s] builds"
build() {  # name python source-dir cflags
    (cd "$3" && CFLAGS="$4" PYTHONPATH=/tmp/ftsite "$2" setup.py -q build --build-base "/tmp/b/$1" \
        --build-lib "/tmp/b/$1/lib" >"/tmp/b/$1.log" 2>&1) || { echo "build $1 failed"; tail -3 "/tmp/b/$1.log"; }
}
for v in gil ft; do
    P=python3
    [ "$v" = ft ] && P="$FT"
    build "base-$v" "$P" .devcarry/base "" &
    build "cur-$v" "$P" . "" &
    build "park5-$v" "$P" . "-DGF_SPIN_NS=5000" &
done
build nospin-ft "$FT" . "-DGF_RING_SPIN_NS=0" &
wait
echo "== [$((SECONDS - t0)) s] A/B, $(python3 --version) (GIL)"
timeout 150 python3 benchmarks/ab_channel.py --repeat 3 base=/tmp/b/base-gil/lib cur=/tmp/b/cur-gil/lib \
    park5=/tmp/b/park5-gil/lib | tee "$OUT/ab_gil.txt"
echo "== [$((SECONDS - t0)) s] A/B, free-threaded, PYTHON_GIL=0"
PYTHON_GIL=0 timeout 200 "$FT" benchmarks/ab_channel.py --repeat 3 base=/tmp/b/base-ft/lib cur=/tmp/b/cur-ft/lib \
    park5=/tmp/b/park5-ft/lib nospin=/tmp/b/nospin-ft/lib | tee "$OUT/ab_ft.txt"
echo "== [$((SECONDS - t0)) s] tests, free-threaded, PYTHON_GIL=0"
PYTHON_GIL=0 PYTHONPATH=/tmp/b/cur-ft/lib:/tmp/ftsite timeout 150 "$FT" -m pytest -q -p no:cacheprovider \
    --timeout 100 -rfE tests/test_channel.py tests/test_select.py tests/test_async.py tests/test_stress.py \
    tests/test_stateful.py tests/test_process.py tests/test_procpool.py >"$OUT/ft_tests.txt" 2>&1
tail -8 "$OUT/ft_tests.txt"
echo "== done in $((SECONDS - t0)) s"
