"""gilfree.parallel_for: a C kernel over [0, n) on every core, with the GIL released.

``kernel`` is a C function ``int kernel(int64_t begin, int64_t end, void *arg)``: an int address, a ctypes
function pointer, a cffi function pointer, or any object with an integer ``.address`` (numba's cfunc).
``arg`` is an int address, a ctypes pointer or object (its address is passed), or None (NULL). The chunks
are taken dynamically by the pool's threads, none of which has a Python thread state attached while a
kernel runs; the caller waits with the GIL released (the main thread only waits, so Ctrl-C stops the
hand-out within 50 ms and raises KeyboardInterrupt once the running chunks end; any other caller, a pool
task included, takes chunks too, so it never deadlocks on a busy pool; the main thread also works chunks
itself, one at a time between signal checks, when no helper is inside one for 50 ms).

A kernel only ever sees ``0 <= begin < end <= n``, each index exactly once, for any ``n`` and ``grain`` up
to 2**63-1. A bad function pointer crashes the process, exactly as it would in C: faulthandler
(``python -X faulthandler``) then names the crashing thread.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from . import _core
from ._pool import ThreadPool

__all__ = ["KernelError", "gil_enabled", "parallel_for", "default_pool"]

KernelError = _core.KernelError
_INT64_MAX = (1 << 63) - 1

_default: ThreadPool | None = None
_default_lock = threading.Lock()


def default_pool() -> ThreadPool:
    """The pool native kernels use when none is given: one worker per available CPU, made on first use."""
    global _default
    with _default_lock:
        if _default is None or _default._stopped:
            _default = ThreadPool(_cpu_count(), thread_name_prefix="gilfree-native")
        return _default


def _cpu_count() -> int:
    """The CPUs this process may run on."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        return int(count() or 1)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _after_fork() -> None:
    global _default, _default_lock
    _default = None  # the parent's pool has no workers in the child
    _default_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def gil_enabled() -> bool:
    """Whether this interpreter runs with the GIL (sys._is_gil_enabled where it exists; on a free-threaded
    build without it, a 3.13 prerelease, the GIL is on unless PYTHON_GIL=0 or -X gil=0 turned it off)."""
    probe = getattr(sys, "_is_gil_enabled", None)
    if probe is not None:
        return bool(probe())
    import sysconfig

    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        return True
    return not (os.environ.get("PYTHON_GIL") == "0" or str(sys._xoptions.get("gil")) == "0")


def _ctypes() -> Any:
    """ctypes if the program imported it (a ctypes object can exist only then), else None: gilfree itself
    never imports it, so it imports on builds without _ctypes (minimal and embedded ones)."""
    return sys.modules.get("ctypes")


def _kernel_address(kernel: Any) -> int:
    if isinstance(kernel, bool):
        raise TypeError("kernel must be a C function (address, ctypes, cffi or .address), not bool")
    ctypes = _ctypes()
    if isinstance(kernel, int):
        address = kernel
    elif ctypes is not None and isinstance(kernel, ctypes._CFuncPtr):
        address = ctypes.cast(kernel, ctypes.c_void_p).value or 0
    elif type(kernel).__module__ == "_cffi_backend":
        import cffi  # type: ignore[import-untyped,unused-ignore]  # only for a cffi object

        address = int(cffi.FFI().cast("uintptr_t", kernel))
    elif isinstance(getattr(kernel, "address", None), int):
        address = kernel.address
    else:
        raise TypeError("kernel must be an int address, a ctypes or cffi function pointer, or an object with "
                        f"an integer .address (numba cfunc), not {type(kernel).__name__}")
    if address <= 0 or address >= 1 << 64:
        raise ValueError(f"kernel address must be a valid non-null function address, got {address:#x}")
    return address


def _arg_address(arg: Any) -> int:
    if arg is None:
        return 0
    if isinstance(arg, bool):
        raise TypeError("arg must be an int address, a ctypes object or None, not bool")
    if isinstance(arg, int):
        if arg < 0 or arg >= 1 << 64:
            raise ValueError(f"arg address out of range: {arg}")
        return arg
    ctypes = _ctypes()
    if ctypes is None:
        raise TypeError(f"arg must be an int address, a ctypes pointer or object, or None, not {type(arg).__name__}")
    if isinstance(arg, ctypes._Pointer):
        return int(ctypes.cast(arg, ctypes.c_void_p).value or 0)
    if isinstance(arg, ctypes.c_void_p):
        return int(arg.value or 0)
    if isinstance(arg, (ctypes._SimpleCData, ctypes.Structure, ctypes.Union, ctypes.Array)):
        return int(ctypes.addressof(arg))
    raise TypeError(f"arg must be an int address, a ctypes pointer or object, or None, not {type(arg).__name__}")


def _workers(workers: int | None, pool: ThreadPool) -> int:
    """The participants: ``workers`` capped at the pool's size (more would only queue idle helpers)."""
    if workers is None:
        return pool.max_workers
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int or None, not {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return min(workers, pool.max_workers)


def _pool(pool: ThreadPool | None) -> ThreadPool:
    if pool is None:
        return default_pool()
    if not isinstance(pool, ThreadPool):
        raise TypeError(f"pool must be a gilfree.ThreadPool or None, not {type(pool).__name__}")
    return pool


def parallel_for(n: int, kernel: Any, arg: Any = 0, *, workers: int | None = None, grain: int | None = None,
                 pool: ThreadPool | None = None) -> None:
    """Call ``kernel(begin, end, arg)`` over [0, n) in chunks (``grain`` each; default about 8 per worker)
    taken dynamically by ``workers`` threads of ``pool``. A nonzero return stops the remaining chunks and
    raises KernelError with ``.code``, ``.begin`` and ``.end``."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, not {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n > _INT64_MAX:
        raise OverflowError(f"n must be at most 2**63-1, got {n}")
    if grain is not None:
        if isinstance(grain, bool) or not isinstance(grain, int):
            raise TypeError(f"grain must be an int or None, not {type(grain).__name__}")
        if grain < 1:
            raise ValueError(f"grain must be >= 1, got {grain}")
        grain = min(grain, max(n, 1))  # one chunk at most: a larger grain means the same
    address = _kernel_address(kernel)
    arg_address = _arg_address(arg)
    p = _pool(pool)
    _core._parallel_for(n, address, arg_address, _workers(workers, p), grain or 0, p)
