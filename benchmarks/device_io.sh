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
PYTHONPATH=/tmp/gilb/lib timeout 200 python3 benchmarks/bench_io.py --repeat 1 --duration 2 \
    --connections 100,1000,10000 --idle 10000 --servers gilfree,asyncio,uvloop \
    --json "$OUT/io16.json" >"$OUT/io16.txt" 2>&1
cat "$OUT/io16.txt"
# 1, 2 and 4 event loops (with the GIL they queue for it; on a free-threaded build they run at once)
for w in 1 2 4; do
    PYTHONPATH=/tmp/gilb/lib timeout 60 python3 benchmarks/bench_io.py --repeat 1 --duration 2 \
        --connections 1000 --servers gilfree --workers $w 2>&1 | grep "^gilfree" | sed "s|^|loops=$w |"
done
echo "== done in $((SECONDS - t0)) s"
