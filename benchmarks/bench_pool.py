"""Pool benchmark: gilfree.ThreadPool against concurrent.futures.ThreadPoolExecutor, same worker count,
side by side in one run.

    python3 dev.py bench                 (runs every benchmark)
    python benchmarks/bench_pool.py [--repeat 5] [--tasks 100000] [--workers N] [--json out.json]

Scenarios (median of --repeat runs, with min-max), all with no-op work so the executor's own cost shows:
  throughput   submit N no-op tasks, then result() each: us per task
  map          list(map(noop, range(N))): us per item
  then-chain   a chain of 1000 continuations (gilfree: f.then(fn); the executor: a done callback that
               submits the next step): us per link
  round trip   submit(noop).result(), one at a time: us per call
Goals (issue #3): throughput at most 1/10 of ThreadPoolExecutor's per-task cost; map at least 10x faster;
the round trip no slower.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import gilfree

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_channel import machine  # noqa: E402


def noop(*args: Any) -> None:
    return None


def inc(x: int) -> int:
    return x + 1


def throughput(ex: cf.Executor, n: int) -> float:
    t0 = time.perf_counter()
    fs = [ex.submit(noop) for _ in range(n)]
    for f in fs:
        f.result()
    return (time.perf_counter() - t0) / n


def map_items(ex: cf.Executor, n: int) -> float:
    t0 = time.perf_counter()
    for _ in ex.map(noop, range(n)):
        pass
    return (time.perf_counter() - t0) / n


def then_chain_gilfree(ex: gilfree.ThreadPool, n: int) -> float:
    t0 = time.perf_counter()
    f: Any = ex.submit(inc, 0)
    for _ in range(n):
        f = f.then(inc)
    assert f.result(timeout=60) == n + 1
    return (time.perf_counter() - t0) / n


def then_chain_executor(ex: cf.Executor, n: int) -> float:
    """The same chain with the standard library: each step's done callback submits the next."""

    def then(fut: cf.Future[int], fn: Callable[[int], int]) -> cf.Future[int]:
        out: cf.Future[int] = cf.Future()

        def step(done: cf.Future[int]) -> None:
            nxt = ex.submit(fn, done.result())
            nxt.add_done_callback(lambda g: out.set_result(g.result()))

        fut.add_done_callback(step)
        return out

    t0 = time.perf_counter()
    f = ex.submit(inc, 0)
    for _ in range(n):
        f = then(f, inc)
    assert f.result(timeout=60) == n + 1
    return (time.perf_counter() - t0) / n


def round_trip(ex: cf.Executor, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        ex.submit(noop).result()
    return (time.perf_counter() - t0) / n


def measure(fn: Callable[[Any, int], float], ex: Any, n: int, repeat: int) -> dict[str, float]:
    fn(ex, max(100, n // 20))  # warm up
    us = sorted(fn(ex, n) * 1e6 for _ in range(repeat))
    return {"median": statistics.median(us), "min": us[0], "max": us[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.repeat < 1 or args.tasks < 1 or args.workers < 1:
        ap.error("--repeat, --tasks and --workers must be positive")
    print(f"gilfree pool benchmark — {time.strftime('%Y-%m-%d')}")
    print(machine())
    print(f"{args.workers} workers each; median of {args.repeat} runs, (min–max); lower is better\n")
    scenarios: list[tuple[str, Callable[[Any, int], float], Callable[[Any, int], float], int]] = [
        ("throughput (us/task)", throughput, throughput, args.tasks),
        ("map (us/item)", map_items, map_items, args.tasks),
        ("then-chain (us/link)", then_chain_gilfree, then_chain_executor, 1000),
        ("round trip (us/call)", round_trip, round_trip, max(200, args.tasks // 50)),
    ]
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"{'scenario':22} {'gilfree.ThreadPool':>26} {'ThreadPoolExecutor':>26} {'ratio':>7}")
    with gilfree.ThreadPool(args.workers) as pool, cf.ThreadPoolExecutor(args.workers) as tpe:
        for name, gf_fn, std_fn, n in scenarios:
            g = measure(gf_fn, pool, n, args.repeat)
            s = measure(std_fn, tpe, n, args.repeat)
            results[name] = {"gilfree": g, "ThreadPoolExecutor": s}
            cell = lambda r: f"{r['median']:8.2f} ({r['min']:.2f}–{r['max']:.2f})"  # noqa: E731
            print(f"{name:22} {cell(g):>26} {cell(s):>26} {s['median'] / g['median']:6.1f}x", flush=True)

    def speedup(name: str) -> float:
        return results[name]["ThreadPoolExecutor"]["median"] / results[name]["gilfree"]["median"]

    goals = [
        ("throughput: gilfree cost <= 1/10 of the executor's", speedup("throughput (us/task)"), 10.0),
        ("map: at least 10x faster", speedup("map (us/item)"), 10.0),
        ("round trip: no slower", speedup("round trip (us/call)"), 1.0),
    ]
    print("\ngoals (ratio = ThreadPoolExecutor / gilfree, medians of the same run)")
    for label, value, goal in goals:
        print(f"  {label:52} {value:6.1f}x  {'met' if value >= goal else 'NOT met'}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "workers": args.workers, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
