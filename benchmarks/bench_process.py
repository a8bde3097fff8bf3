"""gilfree.ProcessChannel against the standard library's process queues, in one run.

Scenarios (processes started with fork; medians of --repeat runs with min-max):
  small        one producer and one consumer process, N messages (an int; a 100-byte bytes): messages/s
  small 4x4    four producers and four consumers, the same
  1 MiB        one producer and one consumer, 1 MiB bytes messages: GB/s, against memcpy in this process
  batch        one producer and one consumer, 10N small ints in batches of 64 (send_many / recv_many;
               faster-fifo's put_many / get_many): messages/s, against single sends and receives
  ping-pong    a round trip between two processes: us
  bounds       what one small message costs, in parts: pickling it (what send/recv did before they encoded
               small values themselves), the Python call, a send + recv with no peer (the ring and the lock),
               and the wake-up (half a ping-pong round trip)
  pool         gilfree.ProcessPool against concurrent.futures.ProcessPoolExecutor (2 workers, fork), a no-op
               task: submit N then wait for all (us per task), one at a time (submit, wait: us per round
               trip), and map over N items (chunksize 1, and 64): us per item
Baselines: multiprocessing.Queue, multiprocessing.SimpleQueue, multiprocessing.Pipe, and faster-fifo where it
installs (pip install faster-fifo).

    python benchmarks/bench_process.py [--messages 200000] [--repeat 5] [--only pool] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any, Callable

import gilfree

CTX = mp.get_context("fork")
STOP = None


# ---- transports: (make, put, get, close) over a common shape ------------------------------------------


class Transport:
    name = ""

    def __init__(self, capacity: int) -> None:
        raise NotImplementedError

    def put(self, v: Any) -> None:
        raise NotImplementedError

    def get(self) -> Any:
        raise NotImplementedError

    def done(self) -> None:
        pass


class GF(Transport):
    name = "gilfree.ProcessChannel"

    def __init__(self, capacity: int, buffer_size: int = (1 << 20) + 4096) -> None:
        self.ch: gilfree.ProcessChannel[Any] = gilfree.ProcessChannel(capacity, buffer_size=buffer_size)
        self.put = self.ch.send  # type: ignore[method-assign]
        self.get = self.ch.recv  # type: ignore[method-assign]

    def done(self) -> None:
        self.ch.release()


class GFBytes(GF):
    name = "gilfree.ProcessChannel bytes"

    def __init__(self, capacity: int, buffer_size: int = (1 << 20) + 4096) -> None:
        super().__init__(capacity, buffer_size)
        self.put = self.ch.send_bytes  # type: ignore[method-assign]
        self.get = self.ch.recv_bytes  # type: ignore[method-assign]


class MPQueue(Transport):
    name = "multiprocessing.Queue"

    def __init__(self, capacity: int) -> None:
        self.q: Any = CTX.Queue(capacity)
        self.put = self.q.put  # type: ignore[method-assign]
        self.get = self.q.get  # type: ignore[method-assign]


class MPSimpleQueue(Transport):
    name = "multiprocessing.SimpleQueue"

    def __init__(self, capacity: int) -> None:
        self.q: Any = CTX.SimpleQueue()
        self.put = self.q.put  # type: ignore[method-assign]
        self.get = self.q.get  # type: ignore[method-assign]


class FasterFifo(Transport):
    name = "faster_fifo.Queue"

    def __init__(self, capacity: int) -> None:
        import faster_fifo

        self.q: Any = faster_fifo.Queue(max_size_bytes=8 << 20)
        self.put = self.q.put  # type: ignore[method-assign]
        self.get = self.q.get  # type: ignore[method-assign]


def transports() -> list[type[Transport]]:
    out: list[type[Transport]] = [GF, MPQueue, MPSimpleQueue]
    try:
        import faster_fifo  # noqa: F401

        out.append(FasterFifo)
    except ImportError:
        pass
    return out


def _producer(t: Transport, n: int, value: Any) -> None:
    for _ in range(n):
        t.put(value)


def _consumer(t: Transport, n: int, ready: Any) -> None:
    ready.set()
    for _ in range(n):
        t.get()


def stream(cls: type[Transport], n: int, value: Any, pairs: int, capacity: int = 1024) -> float:
    """Seconds for `pairs` producers to move n messages each to `pairs` consumers (n each)."""
    t = cls(capacity)
    ready = [CTX.Event() for _ in range(pairs)]
    cons = [CTX.Process(target=_consumer, args=(t, n, ready[i])) for i in range(pairs)]
    for c in cons:
        c.start()
    for r in ready:
        r.wait()
    prods = [CTX.Process(target=_producer, args=(t, n, value)) for _ in range(pairs)]
    t0 = time.perf_counter()
    for p in prods:
        p.start()
    for p in prods + cons:
        p.join()
    dt = time.perf_counter() - t0
    t.done()
    return dt


def _batch_producer(t: Any, n: int, value: Any, batch: int) -> None:
    vals = [value] * batch
    for _ in range(n // batch):
        t.put_many(vals)


def _batch_consumer(t: Any, n: int, ready: Any, batch: int) -> None:
    ready.set()
    got = 0
    while got < n:
        got += len(t.get_many(batch))


class GFBatch:
    name = "gilfree.ProcessChannel send_many/recv_many"

    def __init__(self, capacity: int) -> None:
        self.ch: gilfree.ProcessChannel[Any] = gilfree.ProcessChannel(capacity)

    def put_many(self, vals: list[Any]) -> None:
        self.ch.send_many(vals)

    def get_many(self, k: int) -> list[Any]:
        return self.ch.recv_many(k)

    def done(self) -> None:
        self.ch.release()


class FFBatch:
    name = "faster_fifo.Queue put_many/get_many"

    def __init__(self, capacity: int) -> None:
        import faster_fifo

        self.q: Any = faster_fifo.Queue(max_size_bytes=8 << 20)

    def put_many(self, vals: list[Any]) -> None:
        self.q.put_many(vals)

    def get_many(self, k: int) -> list[Any]:
        return self.q.get_many(max_messages_to_get=k)  # type: ignore[no-any-return]

    def done(self) -> None:
        pass


def batch_stream(cls: Any, n: int, value: Any, batch: int = 64, capacity: int = 1024) -> float:
    """Seconds to move n messages (a multiple of batch) in batches."""
    assert n % batch == 0
    t = cls(capacity)
    ready = CTX.Event()
    c = CTX.Process(target=_batch_consumer, args=(t, n, ready, batch))
    c.start()
    ready.wait()
    p = CTX.Process(target=_batch_producer, args=(t, n, value, batch))
    t0 = time.perf_counter()
    p.start()
    p.join()
    c.join()
    dt = time.perf_counter() - t0
    t.done()
    return dt


def per_op_ns(fn: Callable[[], object], n: int = 200_000) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e9


def bounds() -> dict[str, float]:
    """One small message's cost in parts, each measured in this process (no peer)."""
    import pickle

    ch: gilfree.ProcessChannel[int] = gilfree.ProcessChannel(1024)
    h = ch._h
    v = 12345
    data = pickle.dumps(v, protocol=5)
    out = {
        "pickle.dumps + pickle.loads": per_op_ns(lambda: pickle.loads(pickle.dumps(v, protocol=5))),
        "send_bytes + recv_bytes (the ring, the lock)": per_op_ns(lambda: (h.send_bytes(data), h.recv_bytes())),
        "send_obj + recv_obj (the same, encoded in C)": per_op_ns(lambda: (h.send_obj(v), h.recv_obj())),
        "ch.send + ch.recv (the Python methods)": per_op_ns(lambda: (ch.send(v), ch.recv())),
        "send_many + recv_many of 64, per value": per_op_ns(lambda: (ch.send_many(range(64)), ch.recv_many(64)),
                                                             5_000) / 64,
    }
    out["the Python call (methods minus C)"] = (out["ch.send + ch.recv (the Python methods)"]
                                               - out["send_obj + recv_obj (the same, encoded in C)"])
    ch.release()
    return out


def _pong(a: Any, b: Any, n: int) -> None:
    for _ in range(n):
        b(a())


def ping_pong(send: Callable[[Any], object], recv: Callable[[], object], peer: tuple[Any, Any], n: int
              ) -> float:
    """Seconds per round trip: this process sends, a child echoes with peer = (its recv, its send)."""
    p = CTX.Process(target=_pong, args=(*peer, n))
    p.start()
    send(0)
    recv()  # the child is up
    t0 = time.perf_counter()
    for i in range(n - 1):
        send(i)
        recv()
    dt = time.perf_counter() - t0
    p.join()
    return dt / (n - 1)


def ping_pong_gf(n: int) -> float:
    x: gilfree.ProcessChannel[int] = gilfree.ProcessChannel(1)
    y: gilfree.ProcessChannel[int] = gilfree.ProcessChannel(1)
    try:
        return ping_pong(x.send, y.recv, (x.recv, y.send), n)
    finally:
        x.release()
        y.release()


def ping_pong_pipe(n: int) -> float:
    a, b = CTX.Pipe()
    return ping_pong(a.send, a.recv, (b.recv, b.send), n)


def memcpy_gbps(size: int = 1 << 20, rounds: int = 200) -> float:
    src = bytearray(os.urandom(size))
    dst = bytearray(size)
    view = memoryview(dst)
    t0 = time.perf_counter()
    for _ in range(rounds):
        view[:] = src
    return size * rounds / (time.perf_counter() - t0) / 1e9


def noop(x: Any = None) -> Any:
    return x


def pool_scenarios(n: int) -> dict[str, Callable[[Any], float]]:
    """us per task of each pool scenario, for an executor e."""
    def submit_all(e: Any) -> float:
        t0 = time.perf_counter()
        for f in [e.submit(noop) for _ in range(n)]:
            f.result()
        return (time.perf_counter() - t0) / n * 1e6

    def round_trip(e: Any) -> float:
        m = max(100, n // 4)
        t0 = time.perf_counter()
        for _ in range(m):
            e.submit(noop).result()
        return (time.perf_counter() - t0) / m * 1e6

    def map_items(chunksize: int) -> Callable[[Any], float]:
        def go(e: Any) -> float:
            t0 = time.perf_counter()
            for _ in e.map(noop, range(n), chunksize=chunksize):
                pass
            return (time.perf_counter() - t0) / n * 1e6
        return go
    return {"submit + result": submit_all, "round trip": round_trip, "map": map_items(1),
            "map chunksize=64": map_items(64)}


def med(fn: Callable[[], float], repeat: int) -> dict[str, float]:
    xs = sorted(fn() for _ in range(repeat))
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--big", type=int, default=1000, help="1 MiB messages per run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pool-tasks", type=int, default=4000)
    ap.add_argument("--only", choices=["channel", "pool"], help="run only the channel or only the pool scenarios")
    ap.add_argument("--json")
    args = ap.parse_args()
    n, reps = args.messages, args.repeat
    res: dict[str, Any] = {"cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0], "rows": []}
    print(f"{res['cpus']} CPUs, Python {res['python']}, fork; medians of {reps} (min-max)")

    def row(scenario: str, name: str, stat: dict[str, float], unit: str) -> None:
        res["rows"].append({"scenario": scenario, "transport": name, "unit": unit, **stat})
        f = ",.1f" if stat["median"] < 100 else ",.0f"
        print(f"  {name:40} {stat['median']:12{f}} ({stat['min']:{f}}-{stat['max']:{f}}) {unit}", flush=True)

    def get(s: str, t: str) -> float:
        return next(r["median"] for r in res["rows"] if r["scenario"] == s and r["transport"] == t)

    if args.only != "pool":
        channel_scenarios(args, n, reps, row, get)
    if args.only != "channel":
        import concurrent.futures as cf

        scen = pool_scenarios(args.pool_tasks)
        pools = {"concurrent.futures.ProcessPoolExecutor": cf.ProcessPoolExecutor(2, mp_context=CTX),
                 "gilfree.ProcessPool": gilfree.ProcessPool(2, mp_context=CTX)}
        try:
            for e in pools.values():
                list(e.map(noop, range(200)))  # workers started and warm
            for name, fn in scen.items():
                print(f"\npool, {name}, 2 workers, a no-op task: us per task")
                for pname, e in pools.items():
                    row(f"pool {name}", pname, med(lambda fn=fn, e=e: fn(e), reps), "us")
        finally:
            for e in pools.values():
                e.shutdown()
        print("\nratios (medians of this run)")
        for name in scen:
            s = f"pool {name}"
            ratio = get(s, "concurrent.futures.ProcessPoolExecutor") / get(s, "gilfree.ProcessPool")
            print(f"  {s}: gilfree.ProcessPool takes 1/{ratio:.1f} of ProcessPoolExecutor's time")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


def channel_scenarios(args: Any, n: int, reps: int, row: Callable[..., None], get: Callable[[str, str], float]
                      ) -> None:
    for label, value in (("an int", 12345), ("100-byte bytes", b"x" * 100)):
        for pairs in (1, 4):
            print(f"\nsmall messages ({label}), {pairs} producer(s) x {pairs} consumer(s): messages/s")
            for cls in transports():
                m = n if pairs == 1 else n // 4
                row(f"small {label} {pairs}x{pairs}", cls.name,
                    med(lambda cls=cls, m=m: pairs * m / stream(cls, m, value, pairs), reps), "msg/s")
    print("\n1 MiB bytes messages, one producer and one consumer: GB/s")
    big = os.urandom(1 << 20)
    for cls in [GFBytes, *transports()[1:]]:
        row("1 MiB", cls.name, med(lambda cls=cls: args.big * len(big) / stream(cls, args.big, big, 1, 16) / 1e9, reps),
            "GB/s")
    row("1 MiB", "memcpy in one process", med(memcpy_gbps, reps), "GB/s")
    print("\nbatches of 64 small ints, one producer and one consumer (10x the messages: batches are quick, and a "
          "process start is counted in every run): messages/s")
    batchers: list[Any] = [GFBatch] + ([FFBatch] if FasterFifo in transports() else [])
    for b in batchers:
        nb = 10 * n - 10 * n % 64
        row("batch 64", b.name, med(lambda b=b, nb=nb: nb / batch_stream(b, nb, 12345), reps), "msg/s")
    print("\nping-pong round trip: us")
    row("ping-pong", "gilfree.ProcessChannel pair", med(lambda: ping_pong_gf(20_000) * 1e6, reps), "us")
    row("ping-pong", "multiprocessing.Pipe", med(lambda: ping_pong_pipe(20_000) * 1e6, reps), "us")
    print("\nratios (medians of this run)")
    for label in ("an int", "100-byte bytes"):
        for pairs in (1, 4):
            s = f"small {label} {pairs}x{pairs}"
            line = f"  {s}: {get(s, GF.name) / get(s, MPQueue.name):.1f}x multiprocessing.Queue"
            if FasterFifo in transports():
                line += f", {get(s, GF.name) / get(s, FasterFifo.name):.2f}x faster_fifo"
            print(line)
    single = get("small an int 1x1", GF.name)
    line = f"  batch 64: {get('batch 64', GFBatch.name) / single:.1f}x single sends per message"
    if FasterFifo in transports():
        line += (f"; {get('batch 64', GFBatch.name) / get('batch 64', FFBatch.name):.2f}x faster_fifo's batches, "
                 f"{single / get('small an int 1x1', FasterFifo.name):.2f}x its single puts")
    print(line)
    print(f"  1 MiB: {get('1 MiB', GFBytes.name) / get('1 MiB', 'memcpy in one process'):.0%} of memcpy")
    print(f"  ping-pong: {get('ping-pong', 'gilfree.ProcessChannel pair'):.1f} us vs Pipe "
          f"{get('ping-pong', 'multiprocessing.Pipe'):.1f} us")
    print("\nbounds: one small int, ns (in one process, no peer; medians of this run)")
    parts = [bounds() for _ in range(reps)]
    for k in parts[0]:
        xs = sorted(p[k] for p in parts)
        row("bounds", k, {"median": statistics.median(xs), "min": xs[0], "max": xs[-1]}, "ns")
    print(f"  one wake-up (half a ping-pong round trip): "
          f"{get('ping-pong', 'gilfree.ProcessChannel pair') * 1e3 / 2:,.0f} ns; a streamed message costs "
          f"{1e9 / single:,.0f} ns")


if __name__ == "__main__":
    sys.exit(main())
