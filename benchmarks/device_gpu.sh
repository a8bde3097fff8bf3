#!/usr/bin/env bash
# On a machine with a CUDA GPU and CuPy: build gilfree, run the GPU tests (tests/test_gpu.py, the CuPy
# backend included) and benchmarks/bench_gpu.py, writing bench_gpu.json, bench_gpu.png and the logs to the
# folder given as the argument (default ./device-out). About 2 minutes on one H200.
#   bash benchmarks/device_gpu.sh OUTDIR
set -uo pipefail
OUT="${1:-${OUT:-$PWD/device-out}}"
mkdir -p "$OUT"
t0=$SECONDS
PY="${PYTHON:-python3}"
LIB=/tmp/gilfree-gpu-build/lib
if ! GILFREE_WERROR=1 "$PY" setup.py -q build --build-base /tmp/gilfree-gpu-build --build-lib "$LIB" \
        >"$OUT/build.log" 2>&1; then
    echo "== build failed here (see build.log)"; tail -5 "$OUT/build.log"
    # a build made elsewhere for this Python, carried beside the tree (device-build/)
    if [ -d device-build/lib/gilfree ]; then LIB=$PWD/device-build/lib; echo "== using device-build/lib"; fi
fi
export PYTHONPATH="$LIB" PYTHONUNBUFFERED=1
"$PY" -c 'import sys, gilfree; from gilfree import gpu; print(sys.version.split()[0], gilfree.__file__); print(gpu.available())'
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null
echo "== GPU tests"
timeout 240 "$PY" -m pytest -p no:cacheprovider -q --timeout 120 -rs tests/test_gpu.py 2>&1 | tee "$OUT/tests.log" | tail -25
echo "== tests rc=${PIPESTATUS[0]} at $((SECONDS - t0)) s"
echo "== bench_gpu.py"
timeout 300 "$PY" benchmarks/bench_gpu.py --repeat 5 --out "$OUT" 2>&1 | tee "$OUT/bench_gpu.txt"
echo "== bench rc=${PIPESTATUS[0]}; done in $((SECONDS - t0)) s"
