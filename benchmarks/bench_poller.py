"""What one wake-up costs as registered sockets grow: one socket ready among n.

    python benchmarks/bench_poller.py [--sizes 10,100,1000,10000] [--repeat 5] [--json PATH]

For each n, n sockets (n/2 connected pairs), one of them readable; the time of one call that reports it, by:
  gilfree.Poller.wait(0)          registrations kept on epoll between calls
  selectors.DefaultSelector       the standard library's epoll selector, select(0)
  select.epoll.poll(0)            the raw epoll object (file descriptors only, no objects mapped)
  gilfree.select(readable cases)  n fd cases named in every call (poll(2) over all of them)
Medians of --repeat runs, each the mean over many calls; min-max across runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import select
import selectors
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import gilfree


def per_call(fn: Callable[[], object], budget_s: float = 0.2) -> float:
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(20):
            fn()
        n += 20
        t = time.perf_counter() - t0
        if t >= budget_s:
            return t / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000,10000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    need = max(sizes) + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"needs {need} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    rows: list[dict[str, Any]] = []
    print(f"one ready socket among n; Python {sys.version.split()[0]}; µs per call, medians of {args.repeat} "
          "(min-max)")
    print(f"{'n':>6} {'Poller.wait':>22} {'selectors (epoll)':>22} {'select.epoll.poll':>22} "
          f"{'select(readable...)':>22}")
    for n in sizes:
        pairs = [socket.socketpair() for _ in range(n // 2)]
        mine = [s for pair in pairs for s in pair]  # n sockets, all watched for reading
        k = n // 4
        pairs[k][1].send(b"x")  # makes mine[2 * k], pairs[k][0], readable
        poller = gilfree.Poller()
        sel = selectors.DefaultSelector()
        ep = select.epoll()
        for a in mine:
            poller.register(a, gilfree.READ)
            sel.register(a, selectors.EVENT_READ)
            ep.register(a.fileno(), select.EPOLLIN)
        cases = [gilfree.readable(a) for a in mine]
        assert poller.wait(0) == [(mine[2 * k], gilfree.READ)]
        assert len(sel.select(0)) == 1 and len(ep.poll(0)) == 1
        assert gilfree.select(*cases) == (2 * k, mine[2 * k])
        calls = {"poller": lambda: poller.wait(0), "selectors": lambda: sel.select(0),
                 "epoll": lambda: ep.poll(0), "select": lambda: gilfree.select(*cases)}
        runs: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(args.repeat):  # interleaved, so drift affects all alike
            for k, fn in calls.items():
                runs[k].append(per_call(fn) * 1e6)
        row: dict[str, Any] = {"n": n}
        cells = []
        for k, v in runs.items():
            v.sort()
            row[k] = {"median_us": statistics.median(v), "min_us": v[0], "max_us": v[-1]}
            cells.append(f"{statistics.median(v):8.2f} ({v[0]:.2f}-{v[-1]:.2f})")
        rows.append(row)
        print(f"{n:6d} " + " ".join(f"{c:>22}" for c in cells), flush=True)
        poller.close()
        sel.close()
        ep.close()
        for a, b in pairs:
            a.close()
            b.close()
    first, last = rows[0], rows[-1]
    print(f"from {first['n']} to {last['n']} sockets: Poller.wait "
          f"{last['poller']['median_us'] / first['poller']['median_us']:.2f}x, select over readable cases "
          f"{last['select']['median_us'] / first['select']['median_us']:.0f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"python": sys.version.split()[0], "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
