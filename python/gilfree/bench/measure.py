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


class Figure:
    """One cell's measurement, taken a repetition at a time so that the caller can interleave the
    repetitions of every executor (noise from the rest of the machine then falls on all of them alike):
    ``warm()`` once (the result to check), ``once()`` per repetition, ``probe()`` at the end."""

    def __init__(self, fn: Callable[[], Any], pids: Callable[[], list[int]], workers: int) -> None:
        self.fn, self.pids, self.workers = fn, pids, workers
        self.walls: list[float] = []
        self.cpu_s = 0.0
        self.rss_mib = 0.0
        self.result: Any = None

    def warm(self) -> Any:
        self.result = self.fn()
        return self.result

    def once(self) -> None:
        pids = self.pids()
        for pid in [os.getpid(), *pids]:
            reset_peak(pid)
        cpu0 = time.process_time() + sum(proc_cpu(p) for p in pids)
        t0 = time.perf_counter()
        r = self.fn()
        self.walls.append(time.perf_counter() - t0)
        self.cpu_s += time.process_time() + sum(proc_cpu(p) for p in pids) - cpu0
        self.rss_mib = max(self.rss_mib, sum(peak_kib(p) for p in [os.getpid(), *pids]) / 1024)
        if r != self.result:
            raise AssertionError(f"result changed between repetitions: {r!r} != {self.result!r}")

    @property
    def utilisation(self) -> float:
        """Process CPU time (worker processes included) / wall / workers, over the timed repetitions."""
        return self.cpu_s / max(1e-9, sum(self.walls)) / self.workers

    def probe(self) -> tuple[float, float]:
        """The convoy probe's p50/p99 in ms, during extra runs (at least one, and 100 ms), so that it never
        slows the timed ones."""
        with ConvoyProbe() as probe:
            deadline = time.perf_counter() + 0.1
            runs = 0
            while runs < 1 or time.perf_counter() < deadline:
                self.fn()
                runs += 1
        return probe.quantiles_ms()


def measure(fn: Callable[[], Any], repeat: int, pids: Callable[[], list[int]], workers: int
            ) -> tuple[list[float], Any, float, float, tuple[float, float]]:
    """One figure on its own (not interleaved): the walls, the result, the CPU utilisation, the peak RSS in
    MiB and the probe's p50/p99 in ms."""
    f = Figure(fn, pids, workers)
    f.warm()
    for _ in range(repeat):
        f.once()
    return f.walls, f.result, f.utilisation, f.rss_mib, f.probe()


# ---- how much of the machine the run had ------------------------------------------------------------------


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int, int] | None:
    """(total, busy, steal) jiffies summed over the given CPUs, from /proc/stat; None where unreadable."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    total = busy = steal = 0
    seen = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        v = [int(x) for x in rest.split()[:8]] + [0] * 8
        user, nice, system, idle, iowait, irq, softirq, st = v[:8]
        total += user + nice + system + idle + iowait + irq + softirq + st
        busy += user + nice + system + irq + softirq
        steal += st
        seen += 1
    return (total, busy, steal) if seen else None


def spin_available(seconds: float = 0.3) -> float:
    """A calibration spin: native threads (no GIL), one per CPU, compute for about `seconds`; the CPU time
    they get per second of wall is how many CPUs are free right now (the CPU count on a quiet machine)."""
    from .. import kernels

    cpus = len(os.sched_getaffinity(0))
    kernels.monte_carlo_pi(20_000, workers=cpus)  # start the pool's threads outside the timing
    t0 = time.perf_counter()
    c0 = time.process_time()
    while time.perf_counter() - t0 < seconds:
        kernels.monte_carlo_pi(400_000 * cpus, workers=cpus)
    wall = time.perf_counter() - t0
    return min(float(cpus), (time.process_time() - c0) / wall)


class CpuAccount:
    """How much of this process's CPUs other processes used between ``start()`` and ``stop()``: /proc/stat
    over the CPUs this process may run on, less this process's and its workers' own CPU time."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.cpus = os.sched_getaffinity(0)
        self.pids = pids
        self.free: float | None = None

    def _ours(self) -> float:
        return time.process_time() + sum(proc_cpu(p) for p in self.pids())

    def start(self) -> None:
        self._j0 = _cpu_jiffies(self.cpus)
        self._ours0 = self._ours()

    def stop(self) -> float | None:
        """CPUs free for this run on average (None where /proc/stat is unreadable)."""
        j1 = _cpu_jiffies(self.cpus)
        if self._j0 is None or j1 is None:
            return None
        total, busy, steal = (b - a for a, b in zip(self._j0, j1))
        if total <= 0:
            return None
        ours = (self._ours() - self._ours0) * os.sysconf("SC_CLK_TCK")
        others = min(float(total), max(0.0, busy - ours) + steal)
        self.free = len(self.cpus) * (1 - others / total)
        return self.free


def busy_threshold(cpus: int) -> float:
    """Fewer free CPUs than this and the machine counts as busy: a quarter of a CPU, or a tenth of them."""
    return cpus - max(0.25, 0.1 * cpus)


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
