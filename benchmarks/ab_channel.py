"""Compare builds of gilfree's channels side by side, interleaved, in one run (for tuning the C core).

    python benchmarks/ab_channel.py [--repeat 5] NAME=BUILD_LIB [NAME=BUILD_LIB ...]

Each BUILD_LIB is a directory holding a built gilfree package (``setup.py build --build-lib DIR``, with the
variant's -D flags in CFLAGS). Every repetition runs each build in a fresh process, in turn, so a noisy
machine affects them alike. Per build: ns per item for SPSC (capacity 1024), 4x4 MPMC, batches of 64, and
ns per unbuffered ping-pong round trip, with queue.SimpleQueue measured in the same process; medians with
min-max.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable

N = 200_000


def _child() -> dict[str, float]:
    import gilfree
    from gilfree.bench.measure import mpmc_seconds, spsc_seconds

    def _spsc(put: Callable[[int], object], get: Callable[[], object]) -> float:
        return spsc_seconds(put, get, N) / N * 1e9

    def _mpmc(put: Callable[[int], object], get: Callable[[], object]) -> float:
        return mpmc_seconds(put, get, N, 4) / N * 1e9

    def batched(n: int = N, b: int = 64) -> float:
        ch: gilfree.Channel[int] = gilfree.Channel(1024)
        chunk = tuple(range(b))

        def produce() -> None:
            for _ in range(n // b):
                ch.send_many(chunk)

        t = threading.Thread(target=produce)
        t0 = time.perf_counter()
        t.start()
        got = 0
        while got < (n // b) * b:
            got += len(ch.recv_many(b))
        dt = time.perf_counter() - t0
        t.join()
        return dt / ((n // b) * b) * 1e9

    def pingpong(n: int = 20_000) -> float:
        a: gilfree.Channel[int] = gilfree.Channel(0)
        b: gilfree.Channel[int] = gilfree.Channel(0)

        def echo() -> None:
            for _ in range(n):
                b.send(a.recv())

        t = threading.Thread(target=echo)
        t.start()
        t0 = time.perf_counter()
        for i in range(n):
            a.send(i)
            b.recv()
        dt = time.perf_counter() - t0
        t.join()
        return dt / n * 1e9

    out: dict[str, float] = {}
    ch: gilfree.Channel[int] = gilfree.Channel(1024)
    out["spsc"] = _spsc(ch.send, ch.recv)
    q: queue.SimpleQueue[int] = queue.SimpleQueue()
    out["spsc SimpleQueue"] = _spsc(q.put, q.get)
    ch = gilfree.Channel(1024)
    out["mpmc 4x4"] = _mpmc(ch.send, ch.recv)
    q = queue.SimpleQueue()
    out["mpmc SimpleQueue"] = _mpmc(q.put, q.get)
    out["batched x64"] = batched()
    out["ping-pong"] = pingpong()
    return out


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(_child()))
        return 0
    args = sys.argv[1:]
    repeat = 5
    if args[:1] == ["--repeat"]:
        repeat, args = int(args[1]), args[2:]
    builds = dict(a.split("=", 1) for a in args)
    res: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
    for _ in range(repeat):
        for name, lib in builds.items():
            env = dict(os.environ, PYTHONPATH=lib)
            r = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                               timeout=600)
            if r.returncode != 0:
                print(f"{name}: failed\n{r.stderr[-1000:]}", file=sys.stderr)
                continue
            res[name].append(json.loads(r.stdout))
    first: Any = next(v for v in res.values() if v)
    keys = list(first[0])
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, medians of {repeat} (min-max), ns")
    print(f"{'build':12}" + "".join(f"{k:>22}" for k in keys))
    for name, runs in res.items():
        if not runs:
            continue
        cells = []
        for k in keys:
            xs = sorted(d[k] for d in runs)
            cells.append(f"{statistics.median(xs):.0f} ({xs[0]:.0f}-{xs[-1]:.0f})")
        print(f"{name:12}" + "".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
