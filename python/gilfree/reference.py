"""gilfree.reference: pure-Python twins of gilfree.kernels, same signatures, same results (the tests
compare them). ``workers`` and ``pool`` are accepted and ignored: these run serially in the caller."""

from __future__ import annotations

import array
import math
import os
import time
from typing import Any, Sequence

__all__ = ["count_primes", "mandelbrot", "monte_carlo_pi", "read_files", "sleep", "sum_squares"]

_MASK = (1 << 64) - 1
MC_BLOCK = 65536
SUM_BLOCK = 65536


def is_prime(x: int) -> bool:
    if x < 2:
        return False
    if x < 4:
        return True
    if x % 2 == 0:
        return False
    d = 3
    while d * d <= x:
        if x % d == 0:
            return False
        d += 2
    return True


def count_primes(lo: int, hi: int, *, workers: int | None = None, pool: Any = None) -> int:
    return sum(1 for v in range(lo, hi) if is_prime(v))


def mandelbrot(width: int, height: int, max_iter: int, *, x: float = -2.0, y: float = -1.25, w: float = 3.0,
               h: float = 2.5, out: Any = None, workers: int | None = None, pool: Any = None) -> Any:
    counts = array.array("H", bytes(width * height * 2))
    for row in range(height):
        ci = y + h * row / height
        for col in range(width):
            cr = x + w * col / width
            zr = zi = 0.0
            it = 0
            while it < max_iter and zr * zr + zi * zi <= 4.0:
                zr, zi = zr * zr - zi * zi + cr, 2.0 * zr * zi + ci
                it += 1
            counts[row * width + col] = it
    data = counts.tobytes()
    if out is None:
        return bytearray(data)
    memoryview(out).cast("B")[: len(data)] = data
    return out


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & _MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return state, z ^ (z >> 31)


def monte_carlo_pi(samples: int, seed: int = 0, *, workers: int | None = None, pool: Any = None) -> float:
    hits = 0
    blocks = (samples + MC_BLOCK - 1) // MC_BLOCK
    for block in range(blocks):
        s = ((seed * 0x100000001B3) & _MASK) ^ ((block * 0xD1B54A32D192ED03) & _MASK)
        for _ in range(block * MC_BLOCK, min(samples, (block + 1) * MC_BLOCK)):
            s, a = _splitmix64(s)
            s, b = _splitmix64(s)
            px = (a >> 11) * 2.0**-53
            py = (b >> 11) * 2.0**-53
            hits += px * px + py * py < 1.0
    return 4.0 * hits / samples


def sum_squares(buffer: Any, *, workers: int | None = None, pool: Any = None) -> float:
    view = memoryview(buffer)
    values = view.cast("B").cast("d") if view.format != "d" else view
    total = 0.0
    n = len(values)
    for lo in range(0, n, SUM_BLOCK):  # the same blocking as the kernel; fsum inside a block
        total += math.fsum(v * v for v in values[lo:lo + SUM_BLOCK])
    return total


def sleep(seconds: float, count: int = 1, *, workers: int | None = None, pool: Any = None) -> None:
    for _ in range(count):
        time.sleep(seconds)


def read_files(paths: Sequence[str | os.PathLike[str]], *, block_size: int = 1 << 20,
               workers: int | None = None, pool: Any = None) -> list[int]:
    sizes = []
    for p in paths:
        total = 0
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(block_size):
                total += len(chunk)
        sizes.append(total)
    return sizes
