"""Timing, the GIL convoy probe, CPU time and peak RSS of one figure."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable


class ConvoyProbe:
    """Sleeps 1 ms again and again in a thread of this process and records how late each wake-up is: how
    long a thread that wants the GIL back waits for it while the executor runs."""

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


def proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def reset_peak(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak RSS
    except OSError:
        pass


def peak_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(fn: Callable[[], Any], repeat: int, pids: Callable[[], list[int]], workers: int
            ) -> tuple[list[float], Any, float, float, tuple[float, float]]:
    """Run fn once to warm up (and for the result to check), then `repeat` timed runs; then the probe runs
    during extra runs (at least one, and 100 ms), so it never slows the timed ones. Returns the walls, the
    result, the CPU utilisation (process CPU time, worker processes included / wall / workers), the peak
    RSS in MiB and the probe's p50/p99 in ms."""
    result = fn()
    me = os.getpid()
    for pid in [me, *pids()]:
        reset_peak(pid)
    walls: list[float] = []
    cpu0 = time.process_time() + sum(proc_cpu(p) for p in pids())
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = fn()
        walls.append(time.perf_counter() - t0)
        if r != result:
            raise AssertionError(f"result changed between repetitions: {r!r} != {result!r}")
    cpu = time.process_time() + sum(proc_cpu(p) for p in pids()) - cpu0
    util = cpu / max(1e-9, sum(walls)) / workers
    rss = sum(peak_kib(p) for p in [me, *pids()]) / 1024
    with ConvoyProbe() as probe:
        deadline = time.perf_counter() + 0.1
        runs = 0
        while runs < 1 or time.perf_counter() < deadline:
            fn()
            runs += 1
    return walls, result, util, rss, probe.quantiles_ms()


def spsc_seconds(put: Callable[[int], object], get: Callable[[], object], n: int) -> float:
    """Seconds for one producer thread to put n items and the calling thread to get them."""

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


def mpmc_seconds(put: Callable[[int], object], get: Callable[[], object], n: int, k: int = 4) -> float:
    """Seconds for k producer threads to put n items in all and k consumer threads to get them."""
    per = n // k

    def produce() -> None:
        for i in range(per):
            put(i)

    def consume() -> None:
        for _ in range(per):
            get()

    threads = [threading.Thread(target=produce) for _ in range(k)]
    threads += [threading.Thread(target=consume) for _ in range(k)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - t0) * n / (per * k)
