"""A Pipeline map stage on executors whose workers are other processes: what crossing the wire costs.

The same stage (a small pure-Python function of each item) on: gilfree's thread pool (the baseline: no
pickling), ProcessPoolExecutor, and a dask.distributed LocalCluster of worker processes (as a cluster of
machines would run it, through ``Client.get_executor()``). Reports microseconds per item, the throughput
relative to ProcessPoolExecutor, and a CPU-bound stage's wall time, medians of --repeat runs with min-max.

    python benchmarks/bench_distributed.py [--items 2000] [--repeat 5] [--workers 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import time
from typing import Any, Callable

import gilfree


def small(x: int) -> int:
    return x * x


def cpu(x: int) -> int:  # a few ms of pure Python
    return sum(i * i for i in range(60_000 + x % 7))


def timed(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    fn()  # warm-up: workers started, functions imported
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median": statistics.median(ts), "min": min(ts), "max": max(ts)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--cpu-items", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--json")
    args = ap.parse_args()
    from dask.distributed import Client, LocalCluster

    w = args.workers
    results: dict[str, Any] = {"workers": w, "items": args.items, "cpu_items": args.cpu_items,
                               "cpus": len(os.sched_getaffinity(0)), "rows": {}}
    pool = gilfree.ThreadPool(w)
    ppe = cf.ProcessPoolExecutor(w)
    with LocalCluster(n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        executors: dict[str, cf.Executor] = {"gilfree ThreadPool": pool, "ProcessPoolExecutor": ppe,
                                             "dask LocalCluster": client.get_executor()}
        for name, ex in executors.items():
            def run_small(ex: cf.Executor = ex) -> None:
                out = gilfree.Pipeline(range(args.items)).map(small, workers=4 * w, executor=ex).collect()
                assert out[-1] == (args.items - 1) ** 2

            def run_cpu(ex: cf.Executor = ex) -> None:
                gilfree.Pipeline(range(args.cpu_items)).map(cpu, workers=2 * w, executor=ex).collect()

            s = timed(run_small, args.repeat)
            c = timed(run_cpu, args.repeat)
            results["rows"][name] = {"us_per_item": {k: v / args.items * 1e6 for k, v in s.items()},
                                     "cpu_stage_s": c}
    pool.shutdown()
    ppe.shutdown()
    serial = timed(lambda: [cpu(x) for x in range(args.cpu_items)], args.repeat)
    results["serial_cpu_stage_s"] = serial
    base = results["rows"]["ProcessPoolExecutor"]["us_per_item"]["median"]
    print(f"Pipeline map stage, {w} workers, {results['cpus']} CPUs; medians of {args.repeat} (min-max)")
    print(f"{'executor':<22} {'us/item, small items':>28} {'vs ProcessPool':>15} "
          f"{f'CPU stage ({args.cpu_items} tasks), s':>30}")
    for name, r in results["rows"].items():
        u, c = r["us_per_item"], r["cpu_stage_s"]
        print(f"{name:<22} {u['median']:>10.1f} ({u['min']:.1f}-{u['max']:.1f}){'':>6} "
              f"{base / u['median']:>13.2f}x {c['median']:>14.3f} ({c['min']:.3f}-{c['max']:.3f})")
    print(f"{'serial (no executor)':<22} {'':>28} {'':>15} {serial['median']:>14.3f} "
          f"({serial['min']:.3f}-{serial['max']:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
