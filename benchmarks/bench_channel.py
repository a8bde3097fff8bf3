"""Channel benchmark: gilfree.Channel against the standard library's queues, side by side in one run.

    python3 dev.py bench                    (sets up a virtualenv and builds first)
    python benchmarks/bench_channel.py [--repeat 5] [--items 200000] [--json out.json]

Scenarios (each the median of --repeat runs, with min-max):
  spsc        one producer thread, one consumer: ns per item, capacity 1024
  mpmc        four producer threads, four consumers, capacity 1024: ns per item
  batched     the same moving batches of 64 (send_many / recv_many) against SimpleQueue per item
  pingpong    unbuffered round trip between two threads against a pair of SimpleQueues
  select      the same round trip where the echo side waits in a 2-case select
Goals: spsc at SimpleQueue's speed or better and >= 20x faster than queue.Queue; batched >= 3x faster
than SimpleQueue; ping-pong no slower than the SimpleQueue pair; on a free-threaded build with the GIL
off, spsc and mpmc >= 2x faster than SimpleQueue.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import threading
import time
from typing import Callable

import gilfree
from gilfree.bench.measure import mpmc_seconds, spsc_seconds

CAPACITY: int | None = 1024
BATCH = 64


# ---- scenarios: each returns seconds for `n` items (or round trips) --------------------------------------


def spsc(put: Callable[[int], object], get: Callable[[], object], n: int) -> float:
    """Seconds for one producer thread to put n items and this thread to get them."""
    return spsc_seconds(put, get, n)


def spsc_channel(n: int) -> float:
    ch: gilfree.Channel[int] = gilfree.Channel(CAPACITY)
    return spsc(ch.send, ch.recv, n)


def spsc_simplequeue(n: int) -> float:
    q: queue.SimpleQueue[int] = queue.SimpleQueue()
    return spsc(q.put, q.get, n)


def mpmc(put: Callable[[int], object], get: Callable[[], object], n: int) -> float:
    """Seconds for 4 producer threads to put n items in all and 4 consumer threads to get them."""
    return mpmc_seconds(put, get, n, 4)


def mpmc_channel(n: int) -> float:
    ch: gilfree.Channel[int] = gilfree.Channel(CAPACITY)
    return mpmc(ch.send, ch.recv, n)


def mpmc_simplequeue(n: int) -> float:
    q: queue.SimpleQueue[int] = queue.SimpleQueue()
    return mpmc(q.put, q.get, n)


def spsc_queue(n: int) -> float:
    q: queue.Queue[int] = queue.Queue(maxsize=CAPACITY)
    return spsc(q.put, q.get, n)


def batched_channel(n: int) -> float:
    ch: gilfree.Channel[int] = gilfree.Channel(CAPACITY)
    batches = [list(range(i, min(i + BATCH, n))) for i in range(0, n, BATCH)]

    def produce() -> None:
        send_many = ch.send_many
        for b in batches:
            send_many(b)

    t = threading.Thread(target=produce)
    recv_many = ch.recv_many
    t0 = time.perf_counter()
    t.start()
    got = 0
    while got < n:
        got += len(recv_many(BATCH))
    dt = time.perf_counter() - t0
    t.join()
    return dt


def batched_channel_unbounded(n: int) -> float:
    """The same batches through an unbounded channel: the per-item cost without the hand-offs a full
    buffer forces (with the GIL, every time the 1024-slot buffer fills, both threads trade the GIL)."""
    global CAPACITY
    saved, CAPACITY = CAPACITY, None  # type: ignore[assignment]
    try:
        return batched_channel(n)
    finally:
        CAPACITY = saved


def pingpong_channel(n: int) -> float:
    ping: gilfree.Channel[int] = gilfree.Channel()
    pong: gilfree.Channel[int] = gilfree.Channel()

    def echo() -> None:
        recv, send = ping.recv, pong.send
        for _ in range(n):
            send(recv())

    t = threading.Thread(target=echo)
    t.start()
    send, recv = ping.send, pong.recv
    t0 = time.perf_counter()
    for i in range(n):
        send(i)
        recv()
    dt = time.perf_counter() - t0
    t.join()
    return dt


def pingpong_simplequeue(n: int) -> float:
    ping: queue.SimpleQueue[int] = queue.SimpleQueue()
    pong: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        get, put = ping.get, pong.put
        for _ in range(n):
            put(get())

    t = threading.Thread(target=echo)
    t.start()
    put, get = ping.put, pong.get
    t0 = time.perf_counter()
    for i in range(n):
        put(i)
        get()
    dt = time.perf_counter() - t0
    t.join()
    return dt


def select_channel(n: int) -> float:
    ping: gilfree.Channel[int] = gilfree.Channel()
    other: gilfree.Channel[int] = gilfree.Channel()
    pong: gilfree.Channel[int] = gilfree.Channel()

    def echo() -> None:
        select, a, b, send = gilfree.select, ping.recv, other.recv, pong.send
        for _ in range(n):
            send(select(a, b)[1])

    t = threading.Thread(target=echo)
    t.start()
    send, recv = ping.send, pong.recv
    t0 = time.perf_counter()
    for i in range(n):
        send(i)
        recv()
    dt = time.perf_counter() - t0
    t.join()
    return dt


# ---- harness ------------------------------------------------------------------------------------------------


def measure(fn: Callable[[int], float], n: int, repeat: int) -> dict[str, float]:
    fn(max(1000, n // 20))  # warm up
    ns = sorted(fn(n) / n * 1e9 for _ in range(repeat))
    return {"median": statistics.median(ns), "min": ns[0], "max": ns[-1]}


def fmt(r: dict[str, float]) -> str:
    return f"{r['median']:9.0f}  ({r['min']:.0f}–{r['max']:.0f})"


def machine() -> str:
    """One line describing this machine (gilfree.bench collects the facts)."""
    from gilfree.bench import machine_info

    m = machine_info()
    gil = "GIL enabled" if m["gil_enabled"] else "free-threaded, GIL disabled"
    return f"{m['cpu']}, {m['cpus']} CPUs, Python {m['python']} ({gil}), {m['platform']}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--items", type=int, default=200_000, help="items per throughput run")
    ap.add_argument("--trips", type=int, default=20_000, help="round trips per ping-pong run")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.repeat < 1 or args.items < 1 or args.trips < 1:
        ap.error("--repeat, --items and --trips must be positive")

    print(f"gilfree channel benchmark — {time.strftime('%Y-%m-%d')}")
    print(machine())
    print(f"median of {args.repeat} runs, (min–max); lower is better\n")
    rows: list[tuple[str, str, Callable[[int], float], int]] = [
        ("spsc", "gilfree.Channel(1024) send/recv", spsc_channel, args.items),
        ("spsc", "queue.SimpleQueue put/get", spsc_simplequeue, args.items),
        ("spsc", "queue.Queue(1024) put/get", spsc_queue, max(1000, args.items // 4)),
        ("mpmc", "gilfree.Channel(1024) 4x4", mpmc_channel, args.items),
        ("mpmc", "queue.SimpleQueue 4x4", mpmc_simplequeue, args.items),
        ("batched", f"gilfree send_many/recv_many x{BATCH}", batched_channel, args.items * 4),
        ("batched", f"  same, unbounded channel", batched_channel_unbounded, args.items * 4),
        ("pingpong", "gilfree.Channel(0) pair", pingpong_channel, args.trips),
        ("pingpong", "queue.SimpleQueue pair", pingpong_simplequeue, args.trips),
        ("select", "gilfree 2-case select echo", select_channel, args.trips),
    ]
    results: dict[str, dict[str, float]] = {}
    print(f"{'scenario':9} {'implementation':38} {'ns/item':>9}  (spread)")
    for scenario, name, fn, n in rows:
        r = measure(fn, n, args.repeat)
        results[f"{scenario}:{name}"] = r
        unit = "ns/trip" if scenario in ("pingpong", "select") else "ns/item"
        print(f"{scenario:9} {name:38} {fmt(r)} {unit}", flush=True)

    def med(key: str) -> float:
        return results[key]["median"]

    ch = med("spsc:gilfree.Channel(1024) send/recv")
    sq = med("spsc:queue.SimpleQueue put/get")
    qq = med("spsc:queue.Queue(1024) put/get")
    bt = med(f"batched:gilfree send_many/recv_many x{BATCH}")
    pp = med("pingpong:gilfree.Channel(0) pair")
    ps = med("pingpong:queue.SimpleQueue pair")
    se = med("select:gilfree 2-case select echo")
    mc = med("mpmc:gilfree.Channel(1024) 4x4")
    ms = med("mpmc:queue.SimpleQueue 4x4")
    ratios = [
        ("bounded SPSC vs SimpleQueue (goal <= 1.0x)", ch / sq, ch / sq <= 1.0),
        ("bounded MPMC 4x4 vs SimpleQueue", mc / ms, True),
        ("queue.Queue vs bounded SPSC (goal >= 20x)", qq / ch, qq / ch >= 20),
        ("SimpleQueue vs batched (goal >= 3x)", sq / bt, sq / bt >= 3),
        ("ping-pong vs SimpleQueue pair (goal <= 1.0x)", pp / ps, pp / ps <= 1.0),
        ("2-case select echo vs plain ping-pong", se / pp, True),
    ]
    from gilfree import gil_enabled

    if not gil_enabled():
        ratios += [
            ("GIL off: SimpleQueue vs bounded SPSC (goal >= 2x)", sq / ch, sq / ch >= 2),
            ("GIL off: SimpleQueue vs bounded MPMC (goal >= 2x)", ms / mc, ms / mc >= 2),
        ]
    print("\nratios (medians, same run)")
    for label, value, ok in ratios:
        print(f"  {label:48} {value:6.2f}x  {'met' if ok else 'NOT met'}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "results": results,
                       "ratios": {label: value for label, value, _ in ratios}}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
