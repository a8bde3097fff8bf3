"""Native parallel benchmark: gilfree's C kernels on every core against the same work in pure Python
under threading (ThreadPoolExecutor) and multiprocessing (ProcessPoolExecutor), in one run.

    python3 dev.py bench                 (runs every benchmark)
    python benchmarks/bench_native.py [--repeat 5] [--workers 1,2,4] [--json out.json]

Part 1, scaling: count_primes and mandelbrot (large) at workers = 1, 2, 4, ... CPUs; speedup and parallel
efficiency (speedup / workers) versus workers=1. sum_squares (memory-bound) shows where memory bandwidth
stops the scaling.
Part 2, the same (smaller) work four ways: pure Python serial, pure Python in ThreadPoolExecutor (the GIL
serialises it), pure Python in ProcessPoolExecutor (start method shown), gilfree native at the same worker
count. Results are checked equal.
Goal (issue #4): parallel efficiency >= 0.9 at the core count (>= 1.8x at 2 workers).
"""

from __future__ import annotations

import argparse
import array
import concurrent.futures as cf
import json
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any, Callable

import gilfree
from gilfree import kernels as K
from gilfree import reference as R

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_channel import machine  # noqa: E402


def timed(fn: Callable[[], Any], repeat: int) -> tuple[dict[str, float], Any]:
    fn()  # warm up
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"median": statistics.median(times), "min": times[0], "max": times[-1]}, result


def fmt(r: dict[str, float]) -> str:
    return f"{r['median'] * 1e3:9.1f} ms ({r['min'] * 1e3:.1f}–{r['max'] * 1e3:.1f})"


# ---- pure-Python work split into pieces (for the executors) --------------------------------------------


def py_primes(bounds: tuple[int, int]) -> int:
    return R.count_primes(*bounds)


def py_mandel_rows(args: tuple[int, int, int, int, int]) -> bytes:
    width, height, max_iter, r0, r1 = args
    h = 2.5
    out = R.mandelbrot(width, r1 - r0, max_iter, y=-1.25 + h * r0 / height, h=h * (r1 - r0) / height)
    return bytes(out)


def split(n: int, parts: int) -> list[tuple[int, int]]:
    step = max(1, -(-n // parts))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def main() -> int:
    cpus = len(os.sched_getaffinity(0))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", help="comma-separated worker counts (default 1, 2, 4, ... CPUs)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the work sizes")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.workers:
        counts = sorted({int(w) for w in args.workers.split(",")})
    else:
        counts, w = [], 1
        while w < cpus:
            counts.append(w)
            w *= 2
        counts.append(cpus)
    if args.repeat < 1 or min(counts) < 1:
        ap.error("--repeat and --workers must be positive")
    pool = gilfree.ThreadPool(max(counts), thread_name_prefix="bench-native")
    s = args.scale
    print(f"gilfree native benchmark — {time.strftime('%Y-%m-%d')}")
    print(machine())
    print(f"GIL enabled: {gilfree.gil_enabled()}; median of {args.repeat} runs, (min–max)\n")
    out: dict[str, Any] = {"machine": machine(), "scaling": {}, "executors": {}}

    # ---- part 1: scaling --------------------------------------------------------------------------------
    big_primes = int(4_000_000 * s)
    mw, mh, mi = int(1600 * s ** 0.5), int(1200 * s ** 0.5), 300
    data = array.array("d", [1.5]) * int(40_000_000 * s)
    work: list[tuple[str, Callable[[int], Any]]] = [
        (f"count_primes(0, {big_primes:,})", lambda w: K.count_primes(0, big_primes, workers=w, pool=pool)),
        (f"mandelbrot({mw}x{mh}, {mi} iter)", lambda w: bytes(K.mandelbrot(mw, mh, mi, workers=w, pool=pool))),
        (f"sum_squares({len(data) * 8 >> 20} MiB)", lambda w: K.sum_squares(data, workers=w, pool=pool)),
    ]
    print("part 1: native scaling (speedup and efficiency versus workers=1)")
    print(f"{'kernel':34} {'workers':>7} {'time':>28} {'speedup':>8} {'efficiency':>10}")
    for name, fn in work:
        base = None
        rows = []
        expect = None
        for w in counts:
            r, result = timed(lambda: fn(w), args.repeat)
            if expect is None:
                expect = result
            assert result == expect, f"{name}: result differs at {w} workers"
            base = base or r["median"]
            speedup = base / r["median"]
            rows.append({"workers": w, **r, "speedup": speedup, "efficiency": speedup / w})
            print(f"{name:34} {w:7d} {fmt(r):>28} {speedup:7.2f}x {speedup / w:10.2f}", flush=True)
        out["scaling"][name] = rows
    print()

    # ---- part 2: the same work four ways ---------------------------------------------------------------
    wk = max(counts)
    method = multiprocessing.get_start_method()
    small_primes = int(150_000 * s)
    sw, sh, si = int(160 * s ** 0.5), int(120 * s ** 0.5), 200
    print(f"part 2: the same work, pure Python vs native, {wk} workers "
          f"(ProcessPoolExecutor start method: {method})")
    with cf.ThreadPoolExecutor(wk) as tpe, cf.ProcessPoolExecutor(wk) as ppe:
        ppe.submit(int).result()  # start the processes outside the timings
        cases: list[tuple[str, list[tuple[str, Callable[[], Any]]]]] = [
            (f"count_primes(0, {small_primes:,})", [
                ("pure Python, serial", lambda: R.count_primes(0, small_primes)),
                (f"pure Python, threading x{wk}", lambda: sum(tpe.map(py_primes, split(small_primes, wk * 4)))),
                (f"pure Python, multiprocessing x{wk}",
                 lambda: sum(ppe.map(py_primes, split(small_primes, wk * 4)))),
                ("gilfree native, 1 worker", lambda: K.count_primes(0, small_primes, workers=1, pool=pool)),
                (f"gilfree native x{wk}", lambda: K.count_primes(0, small_primes, workers=wk, pool=pool)),
            ]),
            (f"mandelbrot({sw}x{sh}, {si} iter)", [
                ("pure Python, serial", lambda: bytes(R.mandelbrot(sw, sh, si))),
                (f"pure Python, threading x{wk}", lambda: b"".join(tpe.map(
                    py_mandel_rows, [(sw, sh, si, a, b) for a, b in split(sh, wk * 4)]))),
                (f"pure Python, multiprocessing x{wk}", lambda: b"".join(ppe.map(
                    py_mandel_rows, [(sw, sh, si, a, b) for a, b in split(sh, wk * 4)]))),
                ("gilfree native, 1 worker", lambda: bytes(K.mandelbrot(sw, sh, si, workers=1, pool=pool))),
                (f"gilfree native x{wk}", lambda: bytes(K.mandelbrot(sw, sh, si, workers=wk, pool=pool))),
            ]),
        ]
        for name, variants in cases:
            print(f"  {name}")
            serial = None
            expect = None
            out["executors"][name] = {}
            for label, fn in variants:
                r, result = timed(fn, max(1, min(args.repeat, 3)) if "pure" in label else args.repeat)
                if expect is None:
                    expect = result
                assert result == expect, f"{name}/{label}: result differs"
                serial = serial or r["median"]
                out["executors"][name][label] = r
                print(f"    {label:38} {fmt(r):>28} {serial / r['median']:8.1f}x vs serial Python", flush=True)
    pool.shutdown()
    print("\ngoal: parallel efficiency >= 0.9 at the core count")
    for name, rows in out["scaling"].items():
        last = rows[-1]
        print(f"  {name:34} {last['workers']} workers: efficiency {last['efficiency']:.2f} "
              f"{'met' if last['efficiency'] >= 0.9 else 'NOT met'}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
