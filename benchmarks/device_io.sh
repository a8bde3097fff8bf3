#!/usr/bin/env bash
# On a lent 16-core machine: the process-channel and event-driven I/O benchmarks (no network there:
# faster-fifo and uvloop are skipped when they are not installed). Results go to $OUT (or ./device-out).
set -uo pipefail
OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"
t0=$SECONDS
GILFREE_WERROR=1 python3 setup.py -q build --build-base /tmp/gilb --build-lib /tmp/gilb/lib >"$OUT/build.log" 2>&1 \
    || { echo "build failed"; tail -5 "$OUT/build.log"; }
PYTHONPATH=/tmp/gilb/lib timeout 150 python3 benchmarks/bench_process.py --messages 100000 --big 500 --repeat 3 \
    --json "$OUT/process16.json" >"$OUT/process16.txt" 2>&1
grep -v "resource_tracker\|warnings.warn" "$OUT/process16.txt"
PYTHONPATH=/tmp/gilb/lib timeout 100 python3 benchmarks/bench_io.py --repeat 1 --duration 2 \
    --json "$OUT/io16.json" >"$OUT/io16.txt" 2>&1
cat "$OUT/io16.txt"
echo "== done in $((SECONDS - t0)) s"
