"""gilfree.parallel_for: chunks visited exactly once, KernelError, ctypes/cffi/numba kernels compiled at
test time, Ctrl-C, parallel_for inside a pool task, bad arguments."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import gilfree
from gilfree import KernelError, ThreadPool, parallel_for

KERNELS_C = r"""
#include <stdint.h>
int mark(int64_t b, int64_t e, void *arg) {
    int32_t *c = (int32_t *)arg;
    for (int64_t i = b; i < e; i++) __atomic_fetch_add(&c[i], 1, __ATOMIC_RELAXED);
    return 0;
}
int fail_at(int64_t b, int64_t e, void *arg) {
    int64_t at = *(int64_t *)arg;
    return (b <= at && at < e) ? 7 : 0;
}
int slow(int64_t b, int64_t e, void *arg) {
    volatile double x = 0;
    for (int64_t i = b; i < e; i++) for (long k = 0; k < 3000000; k++) x += k;
    return 0;
}
"""
KT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
CPUS = len(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def lib_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("kernels")
    src, so = d / "k.c", d / "libk.so"
    src.write_text(KERNELS_C)
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    return so


@pytest.fixture(scope="module")
def lib(lib_path: Path) -> ctypes.CDLL:
    return ctypes.CDLL(str(lib_path))


def counts_after(lib: ctypes.CDLL, n: int, **kw: object) -> list[int]:
    counts = (ctypes.c_int32 * max(n, 1))()
    parallel_for(n, KT(("mark", lib)), counts, **kw)  # type: ignore[arg-type]
    return list(counts)[:n]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 101, 1000, 99_999])
@pytest.mark.parametrize("workers", sorted({1, 2, CPUS, 2 * CPUS, 5}))
def test_every_index_visited_exactly_once(lib: ctypes.CDLL, n: int, workers: int) -> None:
    assert counts_after(lib, n, workers=workers) == [1] * n


@pytest.mark.parametrize("grain", [1, 3, 64, 10**9])
def test_grain(lib: ctypes.CDLL, grain: int) -> None:
    assert counts_after(lib, 500, grain=grain, workers=3) == [1] * 500


def test_kernel_error_carries_code_and_range(lib: ctypes.CDLL) -> None:
    at = ctypes.c_int64(42)
    with pytest.raises(KernelError) as info:
        parallel_for(100, KT(("fail_at", lib)), ctypes.pointer(at), grain=10, workers=2)
    e = info.value
    assert e.code == 7 and e.begin == 40 and e.end == 50  # type: ignore[attr-defined]
    assert "[40, 50)" in str(e)


def test_kernel_forms(lib: ctypes.CDLL, lib_path: Path) -> None:
    fn = KT(("mark", lib))
    address = ctypes.cast(fn, ctypes.c_void_p).value
    assert address
    for kernel in (fn, address, type("Cfunc", (), {"address": address})()):
        counts = (ctypes.c_int32 * 50)()
        parallel_for(50, kernel, ctypes.addressof(counts))
        assert list(counts) == [1] * 50


def test_cffi_kernel(lib_path: Path) -> None:
    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    ffi.cdef("int mark(int64_t b, int64_t e, void *arg);")
    clib = ffi.dlopen(str(lib_path))
    counts = (ctypes.c_int32 * 300)()
    parallel_for(300, clib.mark, counts, workers=3)
    assert list(counts) == [1] * 300


def test_numba_cfunc() -> None:
    numba = pytest.importorskip("numba")
    import numpy as np

    sig = numba.types.int32(numba.types.int64, numba.types.int64, numba.types.voidptr)

    @numba.cfunc(sig)
    def noop(b, e, arg):  # type: ignore[no-untyped-def]
        return 0

    parallel_for(1000, noop, None)
    assert np is not None


def test_bad_arguments(lib: ctypes.CDLL) -> None:
    k = KT(("mark", lib))
    with pytest.raises(ValueError):
        parallel_for(-1, k)
    with pytest.raises(ValueError):
        parallel_for(10, 0)
    with pytest.raises(TypeError):
        parallel_for(10, "kernel")
    with pytest.raises(TypeError):
        parallel_for(10, True)
    with pytest.raises(TypeError):
        parallel_for(1.5, k)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        parallel_for(10, k, workers=0)
    with pytest.raises(ValueError):
        parallel_for(10, k, grain=0)
    with pytest.raises(TypeError):
        parallel_for(10, k, arg="x")
    with pytest.raises(TypeError):
        parallel_for(10, k, pool=3)  # type: ignore[arg-type]


def test_parallel_for_inside_a_pool_task_does_not_deadlock(lib: ctypes.CDLL) -> None:
    gate = threading.Event()
    with ThreadPool(2) as pool:
        blocker = pool.submit(gate.wait, 10)  # one worker is busy: the task must do the chunks itself

        def inner() -> list[int]:
            counts = (ctypes.c_int32 * 200)()
            parallel_for(200, KT(("mark", lib)), counts, workers=4, pool=pool)
            return list(counts)

        assert pool.submit(inner).result(timeout=30) == [1] * 200
        gate.set()
        blocker.result(timeout=5)


def test_ctrl_c_stops_the_hand_out(lib_path: Path) -> None:
    child = textwrap.dedent(
        f"""
        import ctypes, time, gilfree
        lib = ctypes.CDLL({str(lib_path)!r})
        KT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
        print("ready", flush=True)
        t0 = time.monotonic()
        try:
            gilfree.parallel_for(100000, KT(("slow", lib)), None, grain=1, workers=2)
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
        """
    )
    with subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().split()
        assert line and line[0] == "interrupted"
        assert float(line[1]) - t0 < 2.0  # running chunks (a few ms each) end, then it raises
        assert proc.wait(10) == 0
