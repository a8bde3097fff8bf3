"""gilfree.kernels against their pure-Python twins in gilfree.reference, at every worker count; buffers
read in place and released; I/O kernels; gil_enabled."""

from __future__ import annotations

import array
import math
import os
import random
import resource
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

import gilfree
from gilfree import kernels as K
from gilfree import reference as R

CPUS = len(os.sched_getaffinity(0))
WORKERS = sorted({1, 2, 3, CPUS, 2 * CPUS})


@pytest.mark.parametrize("workers", WORKERS)
def test_count_primes(workers: int) -> None:
    rng = random.Random(workers)
    for lo, hi in [(0, 0), (0, 2), (0, 3), (10, 11), (0, 5000), (999_000, 1_000_000)] + [
            (a, a + rng.randrange(0, 3000)) for a in (rng.randrange(0, 10**7) for _ in range(3))]:
        assert K.count_primes(lo, hi, workers=workers) == R.count_primes(lo, hi), (lo, hi)
    assert K.count_primes(50, 10, workers=workers) == 0


@pytest.mark.parametrize("workers", WORKERS)
def test_mandelbrot(workers: int) -> None:
    for width, height, it in [(1, 1, 10), (17, 9, 50), (40, 31, 200)]:
        assert K.mandelbrot(width, height, it, workers=workers) == R.mandelbrot(width, height, it)
    kw = dict(x=-0.75, y=0.1, w=0.01, h=0.01)
    assert K.mandelbrot(20, 20, 500, workers=workers, **kw) == R.mandelbrot(20, 20, 500, **kw)  # type: ignore[arg-type]


def test_mandelbrot_out_buffer() -> None:
    out = array.array("H", [0]) * (30 * 20)
    assert K.mandelbrot(30, 20, 64, out=out) is out
    assert out.tobytes() == bytes(R.mandelbrot(30, 20, 64))
    with pytest.raises(ValueError):
        K.mandelbrot(30, 20, 64, out=bytearray(10))
    with pytest.raises(TypeError):
        K.mandelbrot(30, 20, 64, out=b"read only" * 200)
    with pytest.raises(ValueError):
        K.mandelbrot(3, 3, 70000)


@pytest.mark.parametrize("workers", WORKERS)
def test_monte_carlo_pi_same_at_any_worker_count(workers: int) -> None:
    samples = 70_000  # two RNG blocks
    expected = R.monte_carlo_pi(samples, seed=11)
    assert K.monte_carlo_pi(samples, seed=11, workers=workers) == expected
    assert abs(K.monte_carlo_pi(2_000_000, seed=1, workers=workers) - math.pi) < 0.01


@pytest.mark.parametrize("workers", WORKERS)
def test_sum_squares(workers: int) -> None:
    rng = random.Random(3)
    for n in (0, 1, 5, 70_000, 200_003):
        data = array.array("d", (rng.uniform(-1e3, 1e3) for _ in range(n)))
        got = K.sum_squares(data, workers=workers)
        assert math.isclose(got, R.sum_squares(data), rel_tol=1e-12, abs_tol=1e-12)
        assert K.sum_squares(memoryview(data), workers=workers) == got
        assert K.sum_squares(data.tobytes(), workers=workers) == got


def test_sum_squares_numpy_and_bad_buffers() -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(100_000, dtype=np.float64)
    assert math.isclose(K.sum_squares(a), float((a * a).sum()), rel_tol=1e-12)
    with pytest.raises(TypeError):
        K.sum_squares(array.array("f", [1.0, 2.0]))
    with pytest.raises(TypeError):
        K.sum_squares(b"123")  # not a multiple of 8
    with pytest.raises(ValueError, match="contiguous"):
        K.sum_squares(np.arange(10.0)[::2])  # not C-contiguous: numpy's own ValueError
    with pytest.raises(TypeError):
        K.sum_squares(3)


def test_sum_squares_releases_the_buffer() -> None:
    data = bytearray(array.array("d", [2.0] * 1000).tobytes())
    assert K.sum_squares(data) == 4000.0
    data.extend(b"\0" * 8)  # would raise BufferError if the export were still held


def test_sum_squares_holds_the_export_while_running() -> None:
    data = bytearray(8 * 20_000_000)
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: K.sum_squares(data, workers=1))
    t.start()
    time.sleep(0.005)
    try:
        while t.is_alive():
            try:
                data.extend(b"\0" * 8)  # resizing under a running kernel must be refused
                if t.is_alive():
                    errors.append(AssertionError("resized while exported"))
                break
            except BufferError:
                time.sleep(0.001)
    finally:
        t.join()
    assert not errors


@pytest.mark.nosanitizer
def test_a_gib_buffer_is_not_copied() -> None:
    data = bytearray(1 << 30)  # touched: 1 GiB resident
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    assert K.sum_squares(data) == 0.0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 256 * 1024, f"peak RSS grew by {(after - before) // 1024} MiB"


def test_sleep_releases_the_gil_and_runs_in_parallel() -> None:
    t0 = time.monotonic()
    K.sleep(0.1, 4, workers=4)
    assert time.monotonic() - t0 < 0.35
    t0 = time.monotonic()
    K.sleep(0.05, 2, workers=1)
    assert time.monotonic() - t0 >= 0.095
    done = threading.Event()
    spins = 0
    th = threading.Thread(target=lambda: (K.sleep(0.2, 1, workers=1), done.set()))
    th.start()
    while not done.is_set():
        spins += 1
    th.join()
    assert spins > 1000  # this thread ran Python the whole time


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_read_files(tmp_path: Path, workers: int) -> None:
    paths = []
    for i, size in enumerate([0, 1, 4095, 4096, 100_000, 3 << 20]):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(size))
        paths.append(p)
    assert K.read_files(paths, workers=workers) == R.read_files(paths) == [p.stat().st_size for p in paths]
    assert K.read_files(paths, block_size=1000, workers=workers) == R.read_files(paths, block_size=1000)
    with pytest.raises(FileNotFoundError) as info:
        K.read_files([paths[0], tmp_path / "missing"], workers=workers)
    assert "missing" in str(info.value)
    assert K.read_files([]) == []


def test_bad_kernel_arguments() -> None:
    with pytest.raises(TypeError):
        K.count_primes(0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        K.count_primes(0, 10, workers=0)
    with pytest.raises(ValueError):
        K.monte_carlo_pi(0)
    with pytest.raises(ValueError):
        K.sleep(-1)
    with pytest.raises(ValueError):
        K.read_files([], block_size=0)
    with pytest.raises(ValueError):
        K.mandelbrot(-1, 2, 3)


def test_gil_enabled() -> None:
    if hasattr(sys, "_is_gil_enabled"):
        assert gilfree.gil_enabled() is sys._is_gil_enabled()
        return
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        assert gilfree.gil_enabled() is True
        return
    # a free-threaded prerelease without sys._is_gil_enabled: the environment decides
    for value, expected in (("0", "False"), ("1", "True")):
        env = dict(os.environ, PYTHON_GIL=value)
        out = subprocess.run([sys.executable, "-c", "import gilfree; print(gilfree.gil_enabled())"],
                             capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip() == expected


def test_kernels_from_many_threads_at_once() -> None:
    results: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        v = K.count_primes(0, 20_000, workers=2)
        with lock:
            results.append(v)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [2262] * 8
