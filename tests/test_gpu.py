"""gilfree.gpu: stream_map's contract (order, backpressure, errors, cancellation, the device's memory) on the
CPU backend everywhere and on CuPy where a CUDA device is present."""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Iterator

import pytest
from conftest import interrupt_child, wait_until

from gilfree import gpu

np = pytest.importorskip("numpy", reason="the CPU backend runs over NumPy, not installed here")

AVAIL = gpu.available()
BACKENDS = [pytest.param("cpu"),
            pytest.param("cupy", marks=pytest.mark.skipif(not AVAIL, reason=f"no GPU here: {AVAIL.reason}"))]


def _xp(backend: str) -> Any:
    if backend == "cupy":
        import cupy

        return cupy
    return np


def _gpu_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gilfree-gpu")]


def _no_threads_left() -> None:
    wait_until(lambda: not _gpu_threads(), timeout=10)


class Counting:
    """An iterator of chunks that counts how many were taken."""

    def __init__(self, n: int | None, size: int = 1000) -> None:
        self.n, self.size, self.taken = n, size, 0

    def __iter__(self) -> Iterator[Any]:
        i = 0
        while self.n is None or i < self.n:
            self.taken += 1
            yield np.full(self.size, i, dtype=np.float64)
            i += 1


def test_available_says_why_or_which_device() -> None:
    a = gpu.available()
    assert isinstance(a.ok, bool) and bool(a) is a.ok
    if a:
        assert a.device and not a.reason and "CuPy" in a.device
    else:
        assert a.reason and not a.device
        try:
            import cupy  # noqa: F401
        except ImportError:
            assert "CuPy is not installed" in a.reason and "gilfree[gpu]" in a.reason


@pytest.mark.skipif(bool(AVAIL), reason="a GPU is present")
def test_cupy_backend_without_a_gpu_says_why() -> None:
    with pytest.raises(RuntimeError, match="backend='cupy' cannot run here: " + AVAIL.reason[:20]):
        gpu.stream_map(lambda x: x, [], backend="cupy")


def test_default_backend_is_the_gpu_where_available() -> None:
    seen = []
    list(gpu.stream_map(lambda x: seen.append(type(x).__module__) or x, [np.zeros(2)]))
    assert seen == (["cupy"] if AVAIL else ["numpy"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_come_back_in_input_order(backend: str) -> None:
    rng = random.Random(5)
    delays = [rng.choice([0, 0, 0.001, 0.004]) for _ in range(60)]
    xp = _xp(backend)

    def kernel(x: Any) -> Any:
        time.sleep(delays[int(x[0])])  # streams finish out of order
        return x * 2 + 1

    chunks = [np.arange(i, i + 500, dtype=np.float32) for i in range(60)]
    out = list(gpu.stream_map(kernel, chunks, streams=4, depth=2, backend=backend))
    assert len(out) == 60
    for i, r in enumerate(out):
        assert isinstance(r, np.ndarray) and r.dtype == np.float32
        np.testing.assert_array_equal(r, chunks[i] * 2 + 1)
    assert xp is not None
    _no_threads_left()


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_dtypes_and_sizes_vary(backend: str) -> None:
    xp = _xp(backend)
    chunks: list[Any] = [np.ones((3, 4), np.int16), np.arange(10**6, dtype=np.float64), np.zeros(0, np.uint8),
                         [[1, 2], [3, 4]], np.arange(7, dtype=np.complex64), np.ones(5, bool)]

    def kernel(x: Any) -> Any:
        return xp.atleast_1d(x.sum(axis=0)) if x.ndim == 2 else x[::-1].copy()

    out = list(gpu.stream_map(kernel, chunks, streams=2, depth=1, backend=backend))
    assert out[0].tolist() == [3, 3, 3, 3] and out[0].dtype == np.ones((3, 4), np.int16).sum(axis=0).dtype
    np.testing.assert_array_equal(out[1], np.arange(10**6, dtype=np.float64)[::-1])
    assert out[2].shape == (0,) and out[2].dtype == np.uint8
    assert out[3].tolist() == [4, 6]
    np.testing.assert_array_equal(out[4], np.arange(7, dtype=np.complex64)[::-1])
    assert out[5].tolist() == [True] * 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input_gives_an_empty_stream(backend: str) -> None:
    assert list(gpu.stream_map(lambda x: x, [], backend=backend)) == []
    _no_threads_left()


def test_lazy_nothing_is_read_before_the_first_result_is_asked_for() -> None:
    src = Counting(10)
    it = gpu.stream_map(lambda x: x, src, backend="cpu")
    time.sleep(0.05)
    assert src.taken == 0 and not _gpu_threads()
    assert next(it)[0] == 0
    it.close()
    _no_threads_left()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("streams,depth", [(1, 1), (2, 2), (4, 3)])
def test_backpressure_the_host_runs_at_most_streams_times_depth_ahead(backend: str, streams: int, depth: int
                                                                      ) -> None:
    src = Counting(None)
    ahead = []
    it = gpu.stream_map(lambda x: x + 1, src, streams=streams, depth=depth, backend=backend)
    for consumed in range(1, 21):
        r = next(it)
        assert r[0] == consumed  # x + 1 of chunk consumed-1
        time.sleep(0.01)  # a slow consumer: the feeder fills every slot meanwhile
        ahead.append(src.taken - consumed)
    it.close()
    # the slots hold at most streams*depth chunks, and the feeder holds one more while it waits for a slot
    assert max(ahead) <= streams * depth + 1, ahead
    assert max(ahead) >= streams * depth, ahead  # and it does fill them
    _no_threads_left()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exception_in_the_kernel_reaches_the_caller_at_its_chunk(backend: str) -> None:
    class Boom(Exception):
        pass

    def kernel(x: Any) -> Any:
        if int(x[0]) == 5:
            raise Boom("chunk 5")
        return x

    src = Counting(None)
    got = []
    with pytest.raises(Boom, match="chunk 5"):
        for r in gpu.stream_map(kernel, src, streams=3, depth=2, backend=backend):
            got.append(int(r[0]))
    assert got == [0, 1, 2, 3, 4]
    assert src.taken <= 6 + 3 * 2 + 1  # the stream stopped reading
    _no_threads_left()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exception_from_the_chunks_iterator_reaches_the_caller_in_place(backend: str) -> None:
    def chunks() -> Iterator[Any]:
        yield np.zeros(3)
        yield np.ones(3)
        raise OSError("the source failed")

    got = []
    with pytest.raises(OSError, match="the source failed"):
        for r in gpu.stream_map(lambda x: x, chunks(), backend=backend):
            got.append(r.tolist())
    assert got == [[0, 0, 0], [1, 1, 1]]
    _no_threads_left()


@pytest.mark.parametrize("backend", BACKENDS)
def test_breaking_out_stops_reading_and_ends_the_threads(backend: str) -> None:
    src = Counting(None)
    for r in gpu.stream_map(lambda x: x, src, streams=2, depth=2, backend=backend):
        if r[0] == 3:
            break
    _no_threads_left()
    taken = src.taken
    time.sleep(0.05)
    assert src.taken == taken <= 4 + 2 * 2 + 1


def test_bad_input_is_refused_naming_the_argument() -> None:
    with pytest.raises(TypeError, match="kernel must be callable"):
        gpu.stream_map(5, [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="streams must be >= 1"):
        gpu.stream_map(abs, [], streams=0)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        gpu.stream_map(abs, [], depth=-1)
    with pytest.raises(TypeError, match="depth must be an int"):
        gpu.stream_map(abs, [], depth="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="streams must be an int"):
        gpu.stream_map(abs, [], streams=True)
    with pytest.raises(ValueError, match="backend must be one of"):
        gpu.stream_map(abs, [], backend="tpu")
    with pytest.raises(TypeError, match="timeline must be a list"):
        gpu.stream_map(abs, [], timeline=())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="chunks must be an iterable of arrays, not int"):
        gpu.stream_map(abs, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_chunk_or_result_that_is_not_an_array_of_numbers_raises_at_its_place(backend: str) -> None:
    got = []
    with pytest.raises(TypeError, match=r"chunks\[1\] must be an array of numbers, not of dtype object"):
        for r in gpu.stream_map(lambda x: x, [np.zeros(2), [object()], np.ones(2)], backend=backend):
            got.append(r)
    assert len(got) == 1
    with pytest.raises(TypeError, match="kernel must return an array"):
        list(gpu.stream_map(lambda x: x.tolist(), [np.zeros(2)], backend=backend))
    _no_threads_left()


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeline_has_every_phase_of_every_chunk_in_order(backend: str) -> None:
    tl: list[gpu.Span] = []
    n = 12
    out = list(gpu.stream_map(lambda x: x * 3, (np.ones(10**5) for _ in range(n)), streams=1, depth=2,
                              backend=backend, timeline=tl))
    assert len(out) == n
    phases = ("stage", "h2d", "kernel", "d2h", "collect")
    assert sorted((s.chunk, s.phase) for s in tl) == sorted((c, p) for c in range(n) for p in phases)
    by = {(s.chunk, s.phase): s for s in tl}
    slack = 1e-4 if backend == "cupy" else 1e-6  # the device's clock and the host's agree within microseconds
    for c in range(n):
        spans = [by[c, p] for p in phases]
        assert all(-slack <= s.start <= s.end for s in spans)
        assert all(a.end <= b.start + slack for a, b in zip(spans, spans[1:])), spans
        assert {s.stream for s in spans} == {0}
    for c in range(1, n):  # one stream: a chunk's device work starts after the one before it ended there
        assert by[c, "h2d"].start >= by[c - 1, "d2h"].end - 1e-6


def test_streams_overlap_on_the_cpu_backend() -> None:
    """Each stream is a thread: with 4, the kernels of different chunks run at the same time."""
    tl: list[gpu.Span] = []
    list(gpu.stream_map(lambda x: (time.sleep(0.02), x)[1], (np.ones(10) for _ in range(8)), streams=4,
                        backend="cpu", timeline=tl))
    kernels = sorted((s.start, s.end) for s in tl if s.phase == "kernel")
    assert any(b[0] < a[1] for a, b in zip(kernels, kernels[1:]))
    assert len({s.stream for s in tl}) > 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_gil_is_released_while_waiting_for_the_device(backend: str) -> None:
    """A kernel that keeps the device busy for 0.3 s: meanwhile another Python thread runs freely."""
    if backend == "cupy":
        import cupy

        spin = cupy.RawKernel(r'''
        extern "C" __global__ void spin(float *x, long long cycles) {
            long long t0 = clock64();
            while (clock64() - t0 < cycles) { }
            x[threadIdx.x] += 1.0f;
        }''', "spin")
        hz = cupy.cuda.runtime.getDeviceProperties(0)["clockRate"] * 1e3

        def kernel(x: Any) -> Any:
            spin((1,), (1,), (x, np.int64(0.3 * hz)))
            return x
    else:
        def kernel(x: Any) -> Any:
            time.sleep(0.3)
            return x + 1

    count = 0
    stop = threading.Event()

    def counter() -> None:
        nonlocal count
        while not stop.is_set():
            count += 1

    t = threading.Thread(target=counter)
    t.start()
    try:
        time.sleep(0.05)
        c0 = count
        t0 = time.perf_counter()
        list(gpu.stream_map(kernel, [np.zeros(4, np.float32)], streams=1, backend=backend))
        waited = time.perf_counter() - t0
        c1 = count
    finally:
        stop.set()
        t.join()
    assert waited >= 0.25
    # a pure-Python counter makes millions of steps in 0.3 s when it has the GIL most of the time; with the
    # GIL held by a waiter it would be stuck at c0 (a switch interval of 5 ms lets it take a few turns)
    assert c1 - c0 > 100_000, (c1 - c0, waited)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_stops_the_stream_within_100_ms(backend: str) -> None:
    child = f"""
import sys, threading, time
import numpy as np
from gilfree import gpu
def kernel(x):
    time.sleep(0.01)
    return x + 1
def chunks():
    while True:
        yield np.zeros(1 << 16, np.float32)
used0 = None
if {backend!r} == "cupy":
    import cupy
    pool = cupy.get_default_memory_pool()
    used0 = pool.used_bytes()
n = 0
try:
    for r in gpu.stream_map(kernel, chunks(), streams=4, depth=2, backend={backend!r}):
        n += 1
        if n == 5:
            print("ready", flush=True)
except KeyboardInterrupt:
    t = time.monotonic()
    deadline = time.monotonic() + 10
    while any(th.name.startswith("gilfree-gpu") for th in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    left = sum(th.name.startswith("gilfree-gpu") for th in threading.enumerate())
    leaked = 0 if used0 is None else pool.used_bytes() - used0
    print("interrupted", t, left, leaked, flush=True)
"""
    left, leaked = interrupt_child(child, within=0.1)
    assert left == "0" and leaked == "0"


@pytest.mark.skipif(not AVAIL, reason=f"no GPU here: {AVAIL.reason}")
def test_nothing_leaks_on_the_device() -> None:
    import cupy

    pool = cupy.get_default_memory_pool()
    cupy.cuda.Device().synchronize()
    used0 = pool.used_bytes()

    def kernel(x: Any) -> Any:
        if float(x[0]) == 7:  # synchronizes: chunks behind it are in flight
            raise ValueError("seven")
        return cupy.sqrt(x) + x

    for _ in range(3):
        with pytest.raises(ValueError):
            list(gpu.stream_map(kernel, (np.full(1 << 20, i, np.float32) for i in range(20)), backend="cupy"))
        assert pool.used_bytes() == used0
        for r in gpu.stream_map(kernel, (np.full(1 << 20, i, np.float32) for i in range(20)), backend="cupy"):
            if r[0] > 3:
                break
        assert pool.used_bytes() == used0
        assert len(list(gpu.stream_map(cupy.negative, (np.ones(1 << 20) for i in range(20)), backend="cupy"))) == 20
        assert pool.used_bytes() == used0
    _no_threads_left()


@pytest.mark.skipif(not AVAIL, reason=f"no GPU here: {AVAIL.reason}")
def test_a_device_error_reaches_the_caller() -> None:
    # __trap() poisons the CUDA context for the rest of the process: run it in a child
    import subprocess
    import sys

    child = """
import os, numpy as np, cupy
from gilfree import gpu
bad = cupy.RawKernel(r'extern "C" __global__ void bad(float *x) { __trap(); }', "bad")
def kernel(x):
    bad((1,), (1,), (x,))
    return x
try:
    list(gpu.stream_map(kernel, [np.zeros(4, np.float32)] * 3, backend="cupy"))
except Exception as e:
    print("raised", type(e).__name__, e, flush=True)
os._exit(0)  # the context is broken: skip CuPy's clean-up at exit
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("raised ") and "CUDA" in out.stdout.split()[1], out


@pytest.mark.parametrize("source", ["finite", "blocks for ever"])
def test_the_interpreter_exits_with_a_stream_left_suspended(source: str) -> None:
    """An iterator neither exhausted nor closed when the program ends: its stream threads are stopped
    before the interpreter joins its threads (they waited for ever), whatever its chunks source does."""
    import subprocess
    import sys

    child = f"""
import threading, numpy as np
from gilfree import gpu
def chunks():
    for i in range(4):
        yield np.full(10, float(i))
    if {source!r} == "blocks for ever":
        threading.Event().wait()
    yield from (np.ones(10) for _ in range(100))
it = gpu.stream_map(lambda x: x + 1, chunks(), streams=2, depth=1, backend="cpu")
print(next(it)[0], flush=True)
"""
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["1.0"], out
