"""The work: what each scenario computes, sized to the machine.

Every scenario is a list of work units (tasks) and a function of one unit, plus the same work as a native
kernel. Sizing (``plan``): every worker of the largest worker count gets at least ``TASKS_PER_WORKER`` tasks,
and the serial figure of the CPU scenarios lasts about ``Sizes.cpu_python_s``/``cpu_native_s`` seconds on this
machine, calibrated from a short timed probe, so start-up costs and one slow task do not dominate. The
report states the sizes chosen, so runs on two machines can be compared per task.

To add a scenario: a unit function at module level (it crosses into worker processes), an entry in
``SCENARIOS`` and in ``build``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .. import kernels, reference
from .._pool import ThreadPool

SCENARIOS = ["cpu_python", "cpu_native", "io_sleep", "io_files", "mixed"]
EXTRA = ["messages", "dispatch", "io_sockets", "durable", "gpu"]  # per message / task / request, not per executor
TASKS_PER_WORKER = 8
# What each scenario measures (the docs' table is generated from this; a run's own descriptions add sizes).
ABOUT = {
    "cpu_python": "count primes in pure Python: what the GIL does to threads",
    "cpu_native": "count primes with the C kernel in every task: each task releases the GIL",
    "io_sleep": "blocking sleeps: waiting, which releases the GIL",
    "io_files": "read the files of a temporary data set, each several times (the page cache serves the repeats)",
    "mixed": "a pipeline: read each file, then count primes in Python after its size",
    "messages": "one producer, one consumer: gilfree.Channel, queue.Queue, multiprocessing.Queue and "
                "gilfree.ProcessChannel, ns per message",
    "dispatch": "the per-task overhead of each executor: a no-op task submitted, then waited for",
    "io_sockets": "TCP echo on loopback: gilfree's event loops on gilfree.Poller against asyncio (and uvloop "
                  "where installed) and a thread per connection",
    "gpu": "where a GPU and CuPy are present: gilfree.gpu.stream_map on 1 and 4 CUDA streams (copies hidden "
           "behind compute), and Mandelbrot on the GPU against the native kernel on every core",
    "durable": "a gilfree.DurableQueue on SQLite: a producer process and N consumer processes, one of them "
               "killed halfway: messages/s, and the messages redelivered because of the kill",
}
MIN_TASKS = 32

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


def _read_passes(unit: tuple[str, int]) -> int:
    """Read a file `passes` times (the page cache serves all but the first): io_files' unit."""
    path, passes = unit
    return sum(_read_unit(path) for _ in range(passes))


MIXED_SPAN = 1500


def _mixed_unit(path: str) -> int:
    n = _read_unit(path)
    return reference.count_primes(n, n + MIXED_SPAN)


def _noop(_: Any = None) -> None:
    return None


@dataclass
class Sizes:
    """How much work: the serial seconds the CPU scenarios aim at (calibrated on this machine), or fixed
    prime bounds (``py_primes``/``native_primes`` > 0: no calibration, as the smoke tests use)."""

    cpu_python_s: float
    cpu_native_s: float
    sleep_s: float
    file_kib: int
    messages: int
    dispatch: int
    repeat: int
    py_primes: int = 0
    native_primes: int = 0
    min_tasks: int = MIN_TASKS
    io_connections: tuple[int, ...] = (100,)
    io_duration_s: float = 0.5
    io_files_s: float = 0.0  # the serial seconds io_files aims at (0: each file read once)
    durable_messages: int = 5_000
    gpu_size: int = 1024  # Mandelbrot's width and height on the GPU (and on the CPU beside it)


QUICK = Sizes(cpu_python_s=0.2, cpu_native_s=0.3, sleep_s=0.002, file_kib=256, messages=20_000, dispatch=2_000,
              repeat=5, io_files_s=0.1)
FULL = Sizes(cpu_python_s=1.0, cpu_native_s=1.5, sleep_s=0.004, file_kib=2048, messages=200_000,
             dispatch=20_000, repeat=9, io_connections=(100, 1000), io_duration_s=2.0, io_files_s=0.5,
             durable_messages=50_000, gpu_size=4096)
TINY = Sizes(cpu_python_s=0, cpu_native_s=0, sleep_s=0.001, file_kib=8, messages=500, dispatch=100, repeat=2,
             py_primes=3_000, native_primes=60_000, min_tasks=4, io_connections=(10,), io_duration_s=0.1,
             durable_messages=400, gpu_size=256)  # smoke tests and the notebook's test run


def _calibrate(count: Callable[[int, int], int], target_s: float, start: int) -> int:
    """The bound n such that count(0, n) takes about target_s here: time growing probes until one takes
    20 ms, then extrapolate (prime counting by trial division grows about as n**1.5)."""
    n = start
    while True:
        t0 = time.perf_counter()
        count(0, n)
        dt = time.perf_counter() - t0
        if dt >= 0.02 or n >= 1 << 40:
            break
        n *= 4
    return max(1000, int(n * (target_s / max(dt, 1e-6)) ** (1 / 1.5)))


@dataclass
class Plan:
    """The sizes chosen for one run (stated in the report)."""

    tasks: int
    py_primes: int
    native_primes: int
    sleeps: int
    sleep_s: float
    files: int
    file_kib: int
    file_passes: int = 1

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan(sz: Sizes, max_workers: int, scenarios: list[str]) -> Plan:
    tasks = max(sz.min_tasks, TASKS_PER_WORKER * max_workers)
    py = sz.py_primes or (_calibrate(reference.count_primes, sz.cpu_python_s, 2000)
                          if "cpu_python" in scenarios else 0)
    nat = sz.native_primes or (_calibrate(lambda a, b: kernels.count_primes(a, b, workers=1), sz.cpu_native_s,
                                          20_000) if "cpu_native" in scenarios else 0)
    passes = _calibrate_reads(sz.file_kib, sz.io_files_s, tasks) if "io_files" in scenarios else 1
    return Plan(tasks=tasks, py_primes=py, native_primes=nat, sleeps=tasks, sleep_s=sz.sleep_s, files=tasks,
                file_kib=sz.file_kib, file_passes=passes)


def _calibrate_reads(file_kib: int, target_s: float, files: int) -> int:
    """How many times io_files reads each file so that its serial run lasts about target_s here: time reads
    of one file of that size (from the page cache, as the run's reads are) for 20 ms."""
    if target_s <= 0:
        return 1
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="gilfree-bench-probe-") as f:
        f.write(os.urandom(file_kib * 1024))
        f.flush()
        _read_unit(f.name)
        n, t0 = 0, time.perf_counter()
        while (dt := time.perf_counter() - t0) < 0.02:
            _read_unit(f.name)
            n += 1
    return max(1, min(10_000, round(target_s / (files * dt / n))))


def _native_sleeps(p: Plan, workers: int, pool: ThreadPool) -> int:
    kernels.sleep(p.sleep_s, p.sleeps, workers=workers, pool=pool)
    return p.sleeps


def split(n: int, parts: int) -> list[tuple[int, int]]:
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


FILE_SCENARIOS = ("io_files", "mixed")
MAX_DATA_BYTES = 2 << 30  # the data set io_files and mixed read: refused above this


def data_bytes(p: Plan) -> int:
    """The size of the data set the file scenarios read (file i has file_kib KiB + 37 i bytes)."""
    return p.files * p.file_kib * 1024 + 37 * p.files * (p.files - 1) // 2


def build(p: Plan, data_dir: str, names: Sequence[str] = FILE_SCENARIOS) -> dict[str, Scenario]:
    """The scenarios of a plan; the files of io_files and mixed are written into data_dir, only if one of
    them is among `names`."""
    paths = []
    write = any(n in FILE_SCENARIOS for n in names)
    for i in range(p.files):
        path = os.path.join(data_dir, f"data{i:04d}.bin")
        if write and not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(os.urandom(p.file_kib * 1024 + i * 37))
        paths.append(path)
    py_units = split(p.py_primes, p.tasks)
    nat_units = split(p.native_primes, p.tasks)
    return {
        "cpu_python": Scenario(
            "cpu_python", f"count primes below {p.py_primes:,} in pure Python ({len(py_units)} tasks)", py_units,
            _py_primes, lambda w, pool: kernels.count_primes(0, p.py_primes, workers=w, pool=pool)),
        "cpu_native": Scenario(
            "cpu_native", f"count primes below {p.native_primes:,} with the C kernel ({len(nat_units)} tasks)",
            nat_units, _native_primes,
            lambda w, pool: kernels.count_primes(0, p.native_primes, workers=w, pool=pool)),
        "io_sleep": Scenario(
            "io_sleep", f"{p.sleeps} blocking sleeps of {p.sleep_s * 1e3:.0f} ms", [p.sleep_s] * p.sleeps,
            _sleep_unit, lambda w, pool: _native_sleeps(p, w, pool)),
        "io_files": Scenario(
            "io_files", f"read {p.files} files of ~{p.file_kib} KiB, each {p.file_passes} "
            f"time{'s' if p.file_passes > 1 else ''} (the page cache serves the repeats)",
            [(path, p.file_passes) for path in paths], _read_passes,
            lambda w, pool: sum(kernels.read_files(paths * p.file_passes, workers=w, pool=pool))),
        "mixed": Scenario(
            "mixed", f"pipeline: read each of {p.files} files, then count primes after its size", paths,
            _mixed_unit, lambda w, pool: sum(kernels.count_primes(n, n + MIXED_SPAN, workers=w, pool=pool)
                                             for n in kernels.read_files(paths, workers=w, pool=pool))),
    }


# ---- messages: one producer, one consumer, per message -------------------------------------------------


def _mp_produce(q: Any, n: int) -> None:
    """A producer process: a multiprocessing.Queue (put) or a gilfree.ProcessChannel (send)."""
    put = getattr(q, "put", None) or q.send
    put(-1)
    for i in range(n):
        put(i)


def messages(sz: Sizes, repeat: int) -> list[dict[str, Any]]:
    """ns per message through gilfree.Channel, queue.Queue (threads), multiprocessing.Queue and
    gilfree.ProcessChannel (a producer process)."""
    import multiprocessing
    import queue
    import statistics
    import threading

    from .._channel import Channel
    from .._process import ProcessChannel
    from .measure import spsc_seconds

    n = sz.messages
    rows = []

    def spsc(put: Callable[[int], object], get: Callable[[], object]) -> float:
        return spsc_seconds(put, get, n)

    def chan() -> float:
        ch: Channel[int] = Channel(1024)
        return spsc(ch.send, ch.recv)

    def qq() -> float:
        q: queue.Queue[int] = queue.Queue(1024)
        return spsc(q.put, q.get)

    def from_process(q: Any, get: Callable[[], object]) -> float:
        """A producer process puts n items into q; this thread gets them."""
        p = multiprocessing.Process(target=_mp_produce, args=(q, n))
        p.start()
        get()  # the producer is up
        t0 = time.perf_counter()
        for _ in range(n):
            get()
        dt = time.perf_counter() - t0
        p.join()
        return dt

    def mpq() -> float:
        q: Any = multiprocessing.Queue(1024)
        return from_process(q, q.get)

    def pch() -> float:
        ch: ProcessChannel[int] = ProcessChannel(1024)
        try:
            return from_process(ch, ch.recv)
        finally:
            ch.release()

    for name, fn in (("gilfree.Channel(1024)", chan), ("queue.Queue(1024)", qq),
                     ("multiprocessing.Queue(1024)", mpq), ("gilfree.ProcessChannel(1024)", pch)):
        ts = sorted(fn() / n * 1e9 for _ in range(repeat))
        rows.append({"name": name, "median_ns": statistics.median(ts), "min_ns": ts[0], "max_ns": ts[-1]})
    return rows


# ---- io_sockets: event-driven I/O, a short version of benchmarks/bench_io.py ------------------------------


def io_sockets(sz: Sizes) -> list[dict[str, Any]]:
    """Requests/s and latency of a TCP echo workload (closed loop, small messages, loopback) against
    gilfree's event-loop server (gilfree.Poller), asyncio (and uvloop where installed) and a thread per connection."""
    import resource

    from . import echo

    need = max(sz.io_connections) * 2 + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need and (hard == resource.RLIM_INFINITY or hard >= need):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    rows = []
    for conns in sz.io_connections:
        for kind in echo.SERVERS:
            if not echo.available(kind):
                continue
            r = echo.run_one(kind, conns, sz.io_duration_s, min(0.5, sz.io_duration_s), 10_000_000,
                             workers=None)
            rows.append({"server": kind, "connections": conns, **r})
    return rows


# ---- durable: a DurableQueue across processes, with a consumer killed ------------------------------------


def _durable_producer(path: str, n: int) -> None:
    from ..queue import DurableQueue

    with DurableQueue(path) as q:
        for i in range(0, n, 100):
            q.put_many(range(i, min(n, i + 100)))


def _durable_consumer(path: str, deliveries: Any, lease: float) -> None:
    from ..queue import DurableQueue

    with DurableQueue(path, lease=lease) as q, q.consumer("bench", prefetch=16) as c:
        for msg in c:
            with deliveries.get_lock():
                deliveries.value += 1
            msg.ack()


def durable(sz: Sizes, workers: Sequence[int]) -> list[dict[str, Any]]:
    """For each consumer count: a producer process puts the messages (batches of 100) while the consumer
    processes take and ack them; the first consumer is killed (SIGKILL) halfway and a fresh one starts. The
    rate counts from the first put to the last ack; redeliveries are the deliveries beyond one a message
    (the killed consumer's unacked messages, after their lease)."""
    import multiprocessing as mp
    import signal
    import tempfile

    from ..queue import DurableQueue

    ctx = mp.get_context("fork")
    n = sz.durable_messages
    lease = 0.5
    rows = []
    for consumers in workers:
        with tempfile.TemporaryDirectory(prefix="gilfree-bench-durable-") as d:
            path = os.path.join(d, "queue.db")
            q = DurableQueue(path)
            q.consumer("bench").close()
            deliveries = ctx.Value("q", 0)
            procs = [ctx.Process(target=_durable_consumer, args=(path, deliveries, lease)) for _ in range(consumers)]
            t0 = time.perf_counter()
            for p in procs:
                p.start()
            producer = ctx.Process(target=_durable_producer, args=(path, n))
            producer.start()
            killed = False
            try:
                while True:
                    st = q.stats("bench")
                    left = st["ready"] + st["leased"] + st["delayed"]
                    if producer.exitcode is not None and left == 0:
                        break
                    if not killed and deliveries.value >= n // 2:
                        os.kill(procs[0].pid, signal.SIGKILL)  # type: ignore[arg-type]
                        procs[0].join()
                        procs[0] = ctx.Process(target=_durable_consumer, args=(path, deliveries, lease))
                        procs[0].start()
                        killed = True
                    if time.perf_counter() - t0 > 300:
                        raise RuntimeError("the durable scenario did not finish in 300 s")
                    time.sleep(0.002)
                dt = time.perf_counter() - t0
            finally:
                for p in procs:
                    p.kill()
                    p.join()
                producer.join()
                q.close()
            rows.append({"consumers": consumers, "messages": n, "seconds": dt, "msgs_per_s": n / dt,
                         "redeliveries": max(0, deliveries.value - n), "killed": int(killed)})
    return rows


def gpu(sz: Sizes, repeat: int) -> dict[str, Any]:
    """Where a GPU is available: 16 chunks of 4 MiB through ``stream_map`` on 1 and 4 streams, the kernel
    about 5 times a chunk's copy in (so the copies can hide behind it), and Mandelbrot on the GPU (copy back
    counted) against ``kernels.mandelbrot`` on every core. Otherwise says why not."""
    from .. import gpu as _gpu

    a = _gpu.available()
    if not a:
        return {"available": False, "reason": a.reason}
    from . import gpu_lab

    h2d = gpu_lab.copy_bandwidths(repeat=3, mib=64)["h2d_gbs"]["median"] * 1e9
    passes = gpu_lab.calibrate_passes(4, 5 * 4 * 2**20 / h2d)
    ov = gpu_lab.overlap(backend="cupy", chunks=16, chunk_mib=4, passes=passes, streams_list=[1, 4],
                         repeat=max(3, repeat))
    ov.pop("timelines")
    m = gpu_lab.mandelbrot(size=sz.gpu_size, max_iter=1000, repeat=max(3, repeat))
    return {"available": True, "device": a.device, "overlap": ov, "mandelbrot": m}
