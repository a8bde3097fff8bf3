#!/usr/bin/env bash
# The process pool on a lent 16-core machine, as one script: benchmarks/bench_process.py's pool scenarios
# (gilfree.ProcessPool against ProcessPoolExecutor), and the main job's cpu_python and dispatch at 1..16
# workers, where the "gilfree processes" column sits beside "multiprocessing". Results go to $OUT.
set -uo pipefail
OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
t0=$SECONDS
echo "== machine: $(nproc) CPUs; $(python3 --version)"
GILFREE_WERROR=1 python3 setup.py -q build --build-base /tmp/gilb --build-lib /tmp/gilb/lib >"$OUT/build.log" 2>&1 \
    || { echo "build failed"; tail -5 "$OUT/build.log"; }
echo "== [$((SECONDS - t0)) s] bench_process.py --only pool"
PYTHONPATH=/tmp/gilb/lib timeout 150 python3 benchmarks/bench_process.py --only pool --repeat 5 | tee "$OUT/pool16.txt"
echo "== [$((SECONDS - t0)) s] main job, cpu_python and dispatch, workers 1..16"
PYTHONPATH=/tmp/gilb/lib timeout 300 python3 -m gilfree.bench --quick --workers 1,2,4,8,16 \
    --scenario cpu_python,dispatch --no-progress --json "$OUT/bench16p.json" >"$OUT/bench16p.txt" 2>"$OUT/bench16p.err"
echo "rc=$?"
cat "$OUT/bench16p.txt"
tail -3 "$OUT/bench16p.err"
echo "== done in $((SECONDS - t0)) s"
