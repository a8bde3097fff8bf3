"""gilfree.bench — what the GIL does to threading, what multiprocessing costs, what native parallel
execution gains, measured on this machine.

    python -m gilfree.bench [--quick | --full] [--workers 1,2,4] [--scenario cpu_python,io_sleep]
                            [--json PATH] [--csv PATH] [--plot PATH.png]

Every scenario does the same work under every executor (results checked equal): serial; threading
(ThreadPoolExecutor); multiprocessing (ProcessPoolExecutor, start method shown); gilfree.ThreadPool running
Python callables; gilfree native kernels. Each figure is the median of the repetitions with min–max; with
it: speedup versus serial, parallel efficiency, CPU utilisation (process CPU time / wall / workers), peak RSS
(the high-water mark, reset before each measurement), and the GIL convoy probe: while the executor runs, a
probe thread sleeps 1 ms again and again and records how late it wakes (p50/p99).

Importable: ``run(scenarios=..., workers=...) -> Report`` with ``.table()``, ``.to_json()``, ``.plot()``.
JSON schema: ``gilfree.bench.JSON_SCHEMA``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import datetime
import io
import json
import multiprocessing
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from . import _core, kernels, reference
from ._channel import Channel
from ._parallel import gil_enabled, parallel_for
from ._pool import ThreadPool

__all__ = ["EXECUTORS", "FULL", "JSON_SCHEMA", "QUICK", "Report", "SCENARIOS", "TINY", "main", "run"]

EXECUTORS = ["serial", "threading", "multiprocessing", "gilfree", "native"]
SCENARIOS = ["cpu_python", "cpu_native", "io_sleep", "io_files", "mixed"]
EXTRA = ["messages", "dispatch"]

# ---- work units (module level: they cross into worker processes) ----------------------------------------


def _py_primes(bounds: tuple[int, int]) -> int:
    return reference.count_primes(*bounds)


def _native_primes(bounds: tuple[int, int]) -> int:
    return kernels.count_primes(bounds[0], bounds[1], workers=1)


def _sleep_unit(seconds: float) -> int:
    time.sleep(seconds)
    return 1


def _read_unit(path: str) -> int:
    with open(path, "rb", buffering=0) as f:
        total = 0
        while chunk := f.read(1 << 20):
            total += len(chunk)
    return total


MIXED_SPAN = 1500


def _mixed_unit(path: str) -> int:
    n = _read_unit(path)
    return reference.count_primes(n, n + MIXED_SPAN)


def _noop(_: Any = None) -> None:
    return None


@dataclass
class Sizes:
    py_primes: int
    native_primes: int
    sleeps: int
    sleep_s: float
    files: int
    file_kib: int
    messages: int
    dispatch: int
    repeat: int


QUICK = Sizes(py_primes=40_000, native_primes=1_500_000, sleeps=16, sleep_s=0.004, files=16, file_kib=256,
              messages=20_000, dispatch=2_000, repeat=5)
TINY = Sizes(py_primes=3_000, native_primes=60_000, sleeps=4, sleep_s=0.001, files=4, file_kib=8,
             messages=500, dispatch=100, repeat=2)  # smoke tests and the notebook's test run
FULL = Sizes(py_primes=200_000, native_primes=8_000_000, sleeps=64, sleep_s=0.005, files=64, file_kib=2048,
             messages=200_000, dispatch=20_000, repeat=9)


def _native_sleeps(sz: Sizes, workers: int, pool: ThreadPool) -> int:
    kernels.sleep(sz.sleep_s, sz.sleeps, workers=workers, pool=pool)
    return sz.sleeps


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    step = max(1, -(-n // parts))
    return [(a, min(n, a + step)) for a in range(0, n, step)]


@dataclass
class Scenario:
    name: str
    description: str
    units: list[Any]
    unit_fn: Callable[[Any], Any]
    native: Callable[[int, ThreadPool], Any]
    combine: Callable[[list[Any]], Any] = sum


def _scenarios(sz: Sizes, data_dir: str) -> dict[str, Scenario]:
    paths = []
    for i in range(sz.files):
        p = os.path.join(data_dir, f"data{i:03d}.bin")
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(os.urandom(sz.file_kib * 1024 + i * 37))
        paths.append(p)
    py_units = _split(sz.py_primes, 32)
    nat_units = _split(sz.native_primes, 32)
    return {
        "cpu_python": Scenario(
            "cpu_python", f"count primes below {sz.py_primes:,} in pure Python (32 tasks)", py_units,
            _py_primes, lambda w, p: kernels.count_primes(0, sz.py_primes, workers=w, pool=p)),
        "cpu_native": Scenario(
            "cpu_native", f"count primes below {sz.native_primes:,} with the C kernel (32 tasks)", nat_units,
            _native_primes, lambda w, p: kernels.count_primes(0, sz.native_primes, workers=w, pool=p)),
        "io_sleep": Scenario(
            "io_sleep", f"{sz.sleeps} blocking sleeps of {sz.sleep_s * 1e3:.0f} ms", [sz.sleep_s] * sz.sleeps,
            _sleep_unit, lambda w, p: _native_sleeps(sz, w, p)),
        "io_files": Scenario(
            "io_files", f"read {sz.files} files of ~{sz.file_kib} KiB", paths, _read_unit,
            lambda w, p: sum(kernels.read_files(paths, workers=w, pool=p))),
        "mixed": Scenario(
            "mixed", f"pipeline: read each of {sz.files} files, then count primes after its size", paths,
            _mixed_unit, lambda w, p: sum(kernels.count_primes(n, n + MIXED_SPAN, workers=w, pool=p)
                                          for n in kernels.read_files(paths, workers=w, pool=p))),
    }


# ---- measurement helpers --------------------------------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _reset_peak(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak RSS
    except OSError:
        pass


def _peak_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class ConvoyProbe:
    """Sleeps 1 ms again and again in a thread of this process and records how late each wake-up is."""

    def __init__(self) -> None:
        self.overshoot: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gilfree-convoy-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            time.sleep(0.001)
            self.overshoot.append(time.perf_counter() - t0 - 0.001)

    def __enter__(self) -> ConvoyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def quantiles_ms(self) -> tuple[float, float]:
        if not self.overshoot:
            return (0.0, 0.0)
        xs = sorted(self.overshoot)
        return (xs[len(xs) // 2] * 1e3, xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3)


@dataclass
class Cell:
    scenario: str
    executor: str
    workers: int
    wall_s: list[float]
    median_s: float
    min_s: float
    max_s: float
    speedup: float = 1.0
    efficiency: float = 1.0
    cpu_utilisation: float = 0.0
    peak_rss_mib: float = 0.0
    probe_p50_ms: float = 0.0
    probe_p99_ms: float = 0.0
    result_ok: bool = True


@dataclass
class Report:
    machine: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    dispatch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "gilfree.bench/1", "machine": self.machine, "cells": [asdict(c) for c in self.cells],
                "messages": self.messages, "dispatch": self.dispatch, "warnings": self.warnings}

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def to_csv(self, path: str) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["scenario", "executor", "workers", "median_s", "min_s", "max_s", "speedup", "efficiency",
                        "cpu_utilisation", "peak_rss_mib", "probe_p50_ms", "probe_p99_ms"])
            for c in self.cells:
                w.writerow([c.scenario, c.executor, c.workers, f"{c.median_s:.6f}", f"{c.min_s:.6f}",
                            f"{c.max_s:.6f}", f"{c.speedup:.3f}", f"{c.efficiency:.3f}",
                            f"{c.cpu_utilisation:.3f}", f"{c.peak_rss_mib:.1f}", f"{c.probe_p50_ms:.3f}",
                            f"{c.probe_p99_ms:.3f}"])

    def table(self) -> str:
        m = self.machine
        out = io.StringIO()
        out.write(f"gilfree.bench — {m['date']} — {m['cpu']} ({m['cpus']} CPUs), Python {m['python']} "
                  f"[{m['build']}], GIL {'enabled' if m['gil_enabled'] else 'DISABLED'}, "
                  f"multiprocessing start method: {m['start_method']}\n")
        label = {"threading": "threading", "gilfree": "gilfree pool", "native": "native kernels",
                 "multiprocessing": "multiprocessing", "serial": "serial"}
        if not m["gil_enabled"]:
            label["threading"] = "threading (free-threaded)"
            label["gilfree"] = "gilfree pool (free-threaded)"
        for scen in dict.fromkeys(c.scenario for c in self.cells):
            out.write(f"\n{scen}: {m['descriptions'].get(scen, '')}\n")
            out.write(f"  {'executor':30} {'w':>2} {'wall ms (min–max)':>24} {'speedup':>8} {'eff':>5} "
                      f"{'cpu':>5} {'RSS MiB':>8} {'probe p50/p99 ms':>17}\n")
            for c in (c for c in self.cells if c.scenario == scen):
                wall = f"{c.median_s * 1e3:.1f} ({c.min_s * 1e3:.1f}–{c.max_s * 1e3:.1f})"
                out.write(f"  {label[c.executor]:30} {c.workers:2d} {wall:>24} {c.speedup:7.2f}x "
                          f"{c.efficiency:5.2f} {c.cpu_utilisation:5.2f} {c.peak_rss_mib:8.1f} "
                          f"{c.probe_p50_ms:7.2f}/{c.probe_p99_ms:<7.2f}\n")
        if self.messages:
            out.write("\nmessages: one producer, one consumer, ns per message (median, min–max)\n")
            for r in self.messages:
                out.write(f"  {r['name']:34} {r['median_ns']:10.0f} ({r['min_ns']:.0f}–{r['max_ns']:.0f})\n")
        if self.dispatch:
            out.write("\ndispatch: per-task overhead of a no-op task, us (median, min–max)\n")
            for r in self.dispatch:
                out.write(f"  {r['executor']:30} {r['workers']:2d} {r['median_us']:9.2f} "
                          f"({r['min_us']:.2f}–{r['max_us']:.2f})\n")
        for w in self.warnings:
            out.write(f"\nwarning: {w}\n")
        return out.getvalue()

    def plot(self, path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        scens = list(dict.fromkeys(c.scenario for c in self.cells))
        n = len(scens) + 1
        cols = min(3, n)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
        for ax, scen in zip(axes.flat, scens):
            for ex in EXECUTORS:
                cs = sorted((c for c in self.cells if c.scenario == scen and c.executor == ex),
                            key=lambda c: c.workers)
                if cs and ex != "serial":
                    ax.plot([c.workers for c in cs], [c.speedup for c in cs], marker="o", label=ex)
            ws = sorted({c.workers for c in self.cells})
            ax.plot(ws, ws, linestyle=":", color="grey", label="ideal")
            ax.set_xticks(ws)
            if max((c.speedup for c in self.cells if c.scenario == scen), default=1) > 8:
                ax.set_yscale("log")  # native kernels dwarf the rest
            ax.set_title(scen)
            ax.set_xlabel("workers")
            ax.set_ylabel("speedup vs serial")
            ax.legend(fontsize=7)
        ax = axes.flat[len(scens)]
        probe = [c for c in self.cells if c.scenario == "cpu_python"] or self.cells
        names = [f"{c.executor}\nx{c.workers}" for c in probe]
        ax.bar(range(len(probe)), [c.probe_p99_ms for c in probe], color="tab:red", label="p99")
        ax.bar(range(len(probe)), [c.probe_p50_ms for c in probe], color="tab:blue", label="p50")
        ax.set_xticks(range(len(probe)), names, fontsize=6)
        ax.set_ylabel("probe wake-up lateness (ms)")
        ax.set_title(f"GIL convoy probe ({probe[0].scenario})")
        ax.legend(fontsize=7)
        for extra in list(axes.flat)[n:]:
            extra.axis("off")
        m = self.machine
        fig.suptitle(f"gilfree.bench {m['date']}: {m['cpus']} CPUs, Python {m['python']}, "
                     f"GIL {'on' if m['gil_enabled'] else 'off'}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "machine", "cells", "messages", "dispatch", "warnings"],
    "properties": {
        "schema": {"const": "gilfree.bench/1"},
        "machine": {
            "type": "object",
            "required": ["date", "cpu", "cpus", "python", "build", "gil_enabled", "start_method", "platform"],
            "properties": {"cpus": {"type": "integer", "minimum": 1}, "gil_enabled": {"type": "boolean"},
                           "python": {"type": "string"}, "start_method": {"type": "string"}},
        },
        "cells": {"type": "array", "items": {
            "type": "object",
            "required": ["scenario", "executor", "workers", "median_s", "min_s", "max_s", "speedup", "efficiency",
                         "cpu_utilisation", "peak_rss_mib", "probe_p50_ms", "probe_p99_ms", "result_ok"],
            "properties": {"executor": {"enum": EXECUTORS}, "workers": {"type": "integer", "minimum": 1},
                           "median_s": {"type": "number", "minimum": 0}, "result_ok": {"const": True}}}},
        "messages": {"type": "array"},
        "dispatch": {"type": "array"},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
}


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import sysconfig

    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "build": "free-threaded" if sysconfig.get_config_var("Py_GIL_DISABLED") else "default (GIL)",
            "gil_enabled": gil_enabled(), "start_method": multiprocessing.get_start_method(),
            "platform": platform.platform(), "descriptions": {}}


# ---- the run --------------------------------------------------------------------------------------------


def _progress(done: int, total: int, what: str, enabled: bool) -> None:
    if not enabled:
        return
    width = 30
    filled = int(width * done / max(1, total))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what[:40]:40}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def _measure(fn: Callable[[], Any], repeat: int, pids: Callable[[], list[int]], workers: int
             ) -> tuple[list[float], Any, float, float, tuple[float, float]]:
    result = fn()  # warm up, and the result to check
    me = os.getpid()
    for pid in [me, *pids()]:
        _reset_peak(pid)
    walls: list[float] = []
    cpu0 = time.process_time() + sum(_proc_cpu(p) for p in pids())
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = fn()
        walls.append(time.perf_counter() - t0)
        if r != result:
            raise AssertionError(f"result changed between repetitions: {r!r} != {result!r}")
    cpu = time.process_time() + sum(_proc_cpu(p) for p in pids()) - cpu0
    util = cpu / max(1e-9, sum(walls)) / workers
    rss = sum(_peak_kib(p) for p in [me, *pids()]) / 1024
    # The probe runs during extra repetitions, so it never slows the timed ones.
    with ConvoyProbe() as probe:
        deadline = time.perf_counter() + 0.05
        runs = 0
        while runs < 2 or time.perf_counter() < deadline:
            fn()
            runs += 1
    return walls, result, util, rss, probe.quantiles_ms()


def _messages(sz: Sizes, repeat: int) -> list[dict[str, Any]]:
    n = sz.messages
    rows = []

    def spsc(put: Callable[[int], object], get: Callable[[], object]) -> float:
        def produce() -> None:
            for i in range(n):
                put(i)

        t = threading.Thread(target=produce)
        t0 = time.perf_counter()
        t.start()
        for _ in range(n):
            get()
        dt = time.perf_counter() - t0
        t.join()
        return dt

    def chan() -> float:
        ch: Channel[int] = Channel(1024)
        return spsc(ch.send, ch.recv)

    def qq() -> float:
        q: queue.Queue[int] = queue.Queue(1024)
        return spsc(q.put, q.get)

    def mpq() -> float:
        q: Any = multiprocessing.Queue(1024)
        p = multiprocessing.Process(target=_mp_produce, args=(q, n))
        p.start()
        q.get()  # the producer is up
        t0 = time.perf_counter()
        for _ in range(n):
            q.get()
        dt = time.perf_counter() - t0
        p.join()
        return dt

    for name, fn in (("gilfree.Channel(1024)", chan), ("queue.Queue(1024)", qq),
                     ("multiprocessing.Queue(1024)", mpq)):
        ts = sorted(fn() / n * 1e9 for _ in range(repeat))
        rows.append({"name": name, "median_ns": statistics.median(ts), "min_ns": ts[0], "max_ns": ts[-1]})
    return rows


def _mp_produce(q: Any, n: int) -> None:
    q.put(-1)
    for i in range(n):
        q.put(i)


def run(scenarios: Sequence[str] | None = None, workers: Sequence[int] | None = None, *, full: bool = False,
        repeat: int | None = None, progress: bool = False, sizes: Sizes | None = None) -> Report:
    """Run the comparison and return its Report (see the module docstring)."""
    sz = sizes or (FULL if full else QUICK)
    reps = repeat or sz.repeat
    if reps < 1:
        raise ValueError("repeat must be >= 1")
    cpus = len(os.sched_getaffinity(0))
    if workers is None:
        ws, w = [], 1
        while w < cpus:
            ws.append(w)
            w *= 2
        ws.append(cpus)
    else:
        ws = sorted(set(workers))
        if not ws or min(ws) < 1:
            raise ValueError("workers must be positive integers")
    chosen = list(scenarios) if scenarios is not None else SCENARIOS + EXTRA
    unknown = [s for s in chosen if s not in SCENARIOS + EXTRA]
    if unknown:
        raise ValueError(f"unknown scenario(s): {', '.join(unknown)} (choose from {', '.join(SCENARIOS + EXTRA)})")
    report = Report(machine_info())
    with tempfile.TemporaryDirectory(prefix="gilfree-bench-") as data_dir:
        scen = _scenarios(sz, data_dir)
        main_scens = [s for s in chosen if s in SCENARIOS]
        total = len(main_scens) * (1 + 4 * len(ws)) + ("messages" in chosen) + ("dispatch" in chosen) * len(ws)
        done = 0
        noisy: list[str] = []
        executors: dict[tuple[str, int], Any] = {}
        try:
            for w in ws:
                executors[("threading", w)] = cf.ThreadPoolExecutor(w)
                executors[("multiprocessing", w)] = cf.ProcessPoolExecutor(w)
                executors[("gilfree", w)] = ThreadPool(w, thread_name_prefix=f"bench{w}")
                executors[("multiprocessing", w)].submit(int).result()  # start the processes now
            for name in main_scens:
                s = scen[name]
                report.machine["descriptions"][name] = s.description
                serial_median = None
                expected = None
                plan: list[tuple[str, int]] = [("serial", 1)] + [(e, w) for w in ws for e in EXECUTORS[1:]]
                for ex, w in plan:
                    _progress(done, total, f"{name}: {ex} x{w}", progress)
                    fn, pids = _runner(s, ex, w, executors)
                    walls, result, util, rss, (p50, p99) = _measure(fn, reps, pids, w)
                    if expected is None:
                        expected = result
                    ok = result == expected
                    if not ok:
                        raise AssertionError(f"{name}: {ex} x{w} computed {result!r}, serial {expected!r}")
                    med = statistics.median(walls)
                    serial_median = serial_median or med
                    cell = Cell(name, ex, w, walls, med, min(walls), max(walls), serial_median / med,
                                serial_median / med / w, util, rss, p50, p99, ok)
                    report.cells.append(cell)
                    if med > 0 and (max(walls) - min(walls)) / med > 0.10:
                        noisy.append(f"{name}/{ex} x{w} ({(max(walls) - min(walls)) / med:.0%})")
                    done += 1
            if noisy:
                report.warnings.append(
                    f"{len(noisy)} of {len(report.cells)} figures spread (max - min) over 10% of their median, "
                    f"a noisy machine: compare ratios from one run, or use --full. Worst: "
                    + ", ".join(sorted(noisy, key=lambda t: -float(t.rsplit("(", 1)[1][:-2]))[:5]))
            if "dispatch" in chosen:
                report.dispatch = _dispatch(sz, ws, executors, reps, lambda d: _progress(
                    done + d, total, "dispatch", progress))
                done += len(ws)
            if "messages" in chosen:
                _progress(done, total, "messages", progress)
                report.messages = _messages(sz, reps)
                done += 1
            _progress(total, total, "done", progress)
        finally:
            for e in executors.values():
                e.shutdown(wait=True)
    return report


def _runner(s: Scenario, ex: str, w: int, executors: dict[tuple[str, int], Any]
            ) -> tuple[Callable[[], Any], Callable[[], list[int]]]:
    no_pids: Callable[[], list[int]] = lambda: []  # noqa: E731
    if ex == "serial":
        return (lambda: s.combine([s.unit_fn(u) for u in s.units])), no_pids
    if ex == "native":
        pool = executors[("gilfree", w)]
        return (lambda: s.native(w, pool)), no_pids
    e = executors[(ex, w)]
    if ex == "multiprocessing":
        def pids() -> list[int]:
            return [p.pid for p in getattr(e, "_processes", {}).values() if p.pid]
        return (lambda: s.combine(list(e.map(s.unit_fn, s.units)))), pids
    return (lambda: s.combine(list(e.map(s.unit_fn, s.units)))), no_pids


def _dispatch(sz: Sizes, ws: list[int], executors: dict[tuple[str, int], Any], reps: int,
              tick: Callable[[int], None]) -> list[dict[str, Any]]:
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
        for ex in ("threading", "multiprocessing", "gilfree"):
            count = n if ex != "multiprocessing" else max(100, n // 10)
            rows.append({"executor": ex, "workers": w, **per_task(submit_all(executors[(ex, w)], count), count)})
        rows.append({"executor": "native", "workers": w, **per_task(chunks(executors[("gilfree", w)], w), n)})
        tick(i + 1)
    return rows


# ---- command line ------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be positive integers, got {text!r}")
    return values


def _scenario_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in SCENARIOS + EXTRA]
    if not values or bad:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(bad) or text!r}; choose from {', '.join(SCENARIOS + EXTRA)}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gilfree.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, under a minute on 2 cores (default)")
    mode.add_argument("--full", action="store_true", help="larger sizes and more repetitions: steadier")
    ap.add_argument("--workers", type=_int_list, help="worker counts, e.g. 1,2,4 (default 1, 2, 4, ... CPUs)")
    ap.add_argument("--scenario", type=_scenario_list,
                    help=f"comma-separated, from {', '.join(SCENARIOS + EXTRA)} (default all)")
    ap.add_argument("--repeat", type=int, help="repetitions per figure (default 5 quick, 9 full; at least 5 "
                                               "recommended)")
    ap.add_argument("--json", metavar="PATH", help="write the report as JSON (schema gilfree.bench/1)")
    ap.add_argument("--csv", metavar="PATH", help="write the cells as CSV")
    ap.add_argument("--plot", metavar="PATH.png", help="write the speedup and convoy plots (needs matplotlib)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds; figures meaningless)")
    args = ap.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error("--plot needs matplotlib: pip install 'gilfree[bench]'")
    report = run(args.scenario, args.workers, full=args.full, repeat=args.repeat,
                 progress=not args.no_progress and sys.stderr.isatty(), sizes=TINY if args.tiny else None)
    print(report.table())
    if args.json:
        report.to_json(args.json)
    if args.csv:
        report.to_csv(args.csv)
    if args.plot:
        report.plot(args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
