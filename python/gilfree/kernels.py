"""gilfree.kernels: built-in native kernels, run on every core with the GIL released for the whole run.

Each takes ``workers=`` (1 is the serial baseline; default: the pool's size) and ``pool=``, and has a
pure-Python twin with the same signature in gilfree.reference.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Sequence

from . import _core
from ._parallel import _pool, _workers
from ._pool import ThreadPool

__all__ = ["count_primes", "mandelbrot", "monte_carlo_pi", "read_files", "sleep", "sum_squares"]


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def count_primes(lo: int, hi: int, *, workers: int | None = None, pool: ThreadPool | None = None) -> int:
    """The number of primes in [lo, hi) by trial division: CPU-bound integer work, uneven per number."""
    lo, hi = _int(lo, "lo"), _int(hi, "hi")
    for name, v in (("lo", lo), ("hi", hi)):
        if not -(1 << 63) <= v < 1 << 63:
            raise OverflowError(f"{name} must fit in 64 bits (in [-2**63, 2**63)), got {v}")
    p = _pool(pool)
    return int(_core._count_primes(lo, max(lo, hi), _workers(workers, p), p))


def mandelbrot(width: int, height: int, max_iter: int, *, x: float = -2.0, y: float = -1.25, w: float = 3.0,
               h: float = 2.5, out: Any = None, workers: int | None = None, pool: ThreadPool | None = None
               ) -> Any:
    """Iteration counts (uint16, row-major) of the Mandelbrot set over the rectangle (x, y, w, h): a
    bytearray of width*height*2 bytes, or ``out`` (any writable C-contiguous buffer that large) filled."""
    width, height, max_iter = _int(width, "width"), _int(height, "height"), _int(max_iter, "max_iter")
    if width < 0 or height < 0:
        raise ValueError("width and height must be >= 0")
    if width * height * 2 > sys.maxsize:
        raise OverflowError(f"width*height ({width} x {height}) is too large")
    if not 0 <= max_iter <= 65535:
        raise ValueError("max_iter must be in [0, 65535] (counts are uint16)")
    for name, v in (("x", x), ("y", y), ("w", w), ("h", h)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number")
    if out is None:
        result: Any = bytearray(width * height * 2)
    else:
        try:
            view = memoryview(out)
        except TypeError:
            raise TypeError(f"out must be a writable buffer, not {type(out).__name__}") from None
        with view:
            if view.readonly or not view.c_contiguous:
                raise TypeError("out must be a writable C-contiguous buffer")
            if view.nbytes < width * height * 2:
                raise ValueError(f"out must hold width*height uint16 values ({width * height * 2} bytes), "
                                 f"has {view.nbytes}")
        result = out
    p = _pool(pool)
    _core._mandelbrot(width, height, max_iter, float(x), float(y), float(w), float(h), result,
                      _workers(workers, p), p)
    return result


def monte_carlo_pi(samples: int, seed: int = 0, *, workers: int | None = None,
                   pool: ThreadPool | None = None) -> float:
    """Estimate pi from ``samples`` random points; per-block RNG streams, so a seed gives the same result
    at any worker count."""
    samples, seed = _int(samples, "samples"), _int(seed, "seed")
    if not 1 <= samples <= 1 << 53:
        raise ValueError(f"samples must be in [1, 2**53] (the hit count is exact in a float), got {samples}")
    if not 0 <= seed < 1 << 64:
        raise ValueError("seed must be in [0, 2**64)")
    p = _pool(pool)
    return float(_core._monte_carlo_pi(samples, seed, _workers(workers, p), p))


def sum_squares(buffer: Any, *, workers: int | None = None, pool: ThreadPool | None = None) -> float:
    """Sum of squares of a C-contiguous float64 buffer (bytes, array.array('d'), memoryview, numpy), read
    in place (no copy); the buffer export is held for the whole run. Memory-bound."""
    p = _pool(pool)
    return float(_core._sum_squares(buffer, _workers(workers, p), p))


def sleep(seconds: float, count: int = 1, *, workers: int | None = None, pool: ThreadPool | None = None
          ) -> None:
    """``count`` blocking sleeps of ``seconds`` each, spread over the workers, GIL released: the I/O-bound
    baseline (wall time about ceil(count / workers) * seconds)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
    if not 0 <= seconds <= 1e9:  # NaN and inf fail too
        raise ValueError(f"seconds must be a finite number in [0, 1e9], got {seconds!r}")
    count = _int(count, "count")
    if count < 0:
        raise ValueError("count must be >= 0")
    p = _pool(pool)
    _core._sleep(float(seconds), count, _workers(workers, p), p)


def read_files(paths: Sequence[str | os.PathLike[str]], *, block_size: int = 1 << 20,
               workers: int | None = None, pool: ThreadPool | None = None) -> list[int]:
    """Read every file to its end in ``block_size`` blocks, GIL released; the bytes read per file. OSError
    (with the file name) if one cannot be read."""
    if isinstance(paths, (str, bytes, bytearray, os.PathLike)):
        raise TypeError(f"paths must be a sequence of paths, not a single {type(paths).__name__}")
    block_size = _int(block_size, "block_size")
    if not 1 <= block_size <= 1 << 30:
        raise ValueError(f"block_size must be in [1, 2**30], got {block_size}")
    p = _pool(pool)
    return list(_core._read_files([os.fspath(x) for x in paths], block_size, _workers(workers, p), p))
