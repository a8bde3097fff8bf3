"""How the work runs: the executor columns, and the per-task overhead of each (``dispatch``).

serial; threading (ThreadPoolExecutor); multiprocessing (ProcessPoolExecutor, the platform's start method;
``map`` with a chunksize that gives each worker about four chunks, as one should use it); processes
(gilfree.ProcessPool, the same start method and chunksize: tasks and results through shared memory); gilfree
(gilfree.ThreadPool running the same Python callables); native (gilfree.kernels: the same work in C with the
GIL released throughout).
"""

from __future__ import annotations

import concurrent.futures as cf
import statistics
import time
from typing import Any, Callable

from .. import _core
from .._parallel import parallel_for
from .._pool import ThreadPool
from .._procpool import ProcessPool
from .scenarios import Scenario, Sizes, _noop

# One set of names, in the progress display, the table, the plot, the CSV and the JSON.
EXECUTORS = ["serial", "threading", "multiprocessing", "gilfree processes", "gilfree pool", "native kernels"]
LABELS = {e: e for e in EXECUTORS}  # for code written against the earlier short ids
WHAT = {"serial": "a plain loop in the calling thread",
        "threading": "concurrent.futures.ThreadPoolExecutor",
        "multiprocessing": "concurrent.futures.ProcessPoolExecutor (map with a chunksize of about 4 chunks a worker)",
        "gilfree processes": "gilfree.ProcessPool (the same start method and chunksize; shared-memory channels)",
        "gilfree pool": "gilfree.ThreadPool running the same Python callables",
        "native kernels": "gilfree.kernels: the same work in C on gilfree's pool, the GIL released throughout"}
PROCESS_EXECUTORS = ("multiprocessing", "gilfree processes")
PARALLEL = EXECUTORS[1:]


def make(ws: list[int]) -> dict[tuple[str, int], Any]:
    """One executor of each kind per worker count, started before anything is timed."""
    executors: dict[tuple[str, int], Any] = {}
    try:
        for w in ws:
            executors[("threading", w)] = cf.ThreadPoolExecutor(w)
            executors[("multiprocessing", w)] = cf.ProcessPoolExecutor(w)
            executors[("gilfree processes", w)] = ProcessPool(w)
            executors[("gilfree pool", w)] = ThreadPool(w, thread_name_prefix=f"bench{w}")
            for ex in PROCESS_EXECUTORS:  # start the processes now
                list(executors[(ex, w)].map(int, range(w)))
    except BaseException:
        shutdown(executors)
        raise
    return executors


def worker_pids(executors: dict[tuple[str, int], Any]) -> list[int]:
    """The worker processes of every process executor (their CPU time is this run's, not another's)."""
    return [p.pid for (ex, _), e in executors.items() if ex in PROCESS_EXECUTORS
            for p in list(getattr(e, "_processes", {}).values()) if p.pid]


def shutdown(executors: dict[tuple[str, int], Any]) -> None:
    for e in executors.values():
        e.shutdown(wait=True)


def runner(s: Scenario, ex: str, w: int, executors: dict[tuple[str, int], Any]
           ) -> tuple[Callable[[], Any], Callable[[], list[int]]]:
    """The callable that does scenario s once on executor ex with w workers, and the pids to account for."""
    no_pids: Callable[[], list[int]] = lambda: []  # noqa: E731
    if ex == "serial":
        return (lambda: s.combine([s.unit_fn(u) for u in s.units])), no_pids
    if ex == "native kernels":
        pool = executors[("gilfree pool", w)]
        return (lambda: s.native(w, pool)), no_pids
    e = executors[(ex, w)]
    if ex in PROCESS_EXECUTORS:
        chunk = max(1, len(s.units) // (4 * w))

        def pids() -> list[int]:
            return [p.pid for p in getattr(e, "_processes", {}).values() if p.pid]
        return (lambda: s.combine(list(e.map(s.unit_fn, s.units, chunksize=chunk)))), pids
    return (lambda: s.combine(list(e.map(s.unit_fn, s.units)))), no_pids


def dispatch(sz: Sizes, ws: list[int], executors: dict[tuple[str, int], Any], reps: int,
             tick: Callable[[int], None]) -> list[dict[str, Any]]:
    """Per-task overhead of a no-op task, in us: submit then wait for every result."""
    n = sz.dispatch
    rows = []

    def per_task(fn: Callable[[], object], count: int) -> dict[str, float]:
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) / count * 1e6)
        ts.sort()
        return {"median_us": statistics.median(ts), "min_us": ts[0], "max_us": ts[-1]}

    def serial() -> None:
        for _ in range(n):
            _noop()

    def submit_all(e: Any, count: int) -> Callable[[], object]:
        def go() -> None:
            for f in [e.submit(_noop) for _ in range(count)]:
                f.result()
        return go

    def chunks(pool: ThreadPool, w: int) -> Callable[[], object]:  # one chunk per task, a no-op kernel
        return lambda: parallel_for(n, _core._noop_kernel, None, workers=w, grain=1, pool=pool)

    rows.append({"executor": "serial", "workers": 1, **per_task(serial, n)})
    for i, w in enumerate(ws):
        for ex in ("threading", "multiprocessing", "gilfree processes", "gilfree pool"):
            count = n if ex not in PROCESS_EXECUTORS else max(100, n // 10)
            rows.append({"executor": ex, "workers": w, **per_task(submit_all(executors[(ex, w)], count), count)})
        rows.append({"executor": "native kernels", "workers": w, **per_task(chunks(executors[("gilfree pool", w)], w), n)})
        tick(i + 1)
    return rows
