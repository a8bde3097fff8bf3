"""gilfree.DurableQueue against the embedded queues Python users reach for, and against raw Redis, in one run.

SQLite (each on its own file in a temporary directory, at its default durability; gilfree's is WAL with
synchronous=NORMAL), beside a bare sqlite3 INSERT in its own transaction (WAL, NORMAL): the floor of any
durable single put:
  put        one message at a time, one producer: messages/s
  put_many   batches of 1,000 (gilfree only: the others have no batch put): messages/s
  get+ack    one consumer takes and acknowledges every message, one at a time: messages/s (gilfree also
             with prefetch=32: get takes 32 at a time from the store, each still acked on its own)
Baselines: persist-queue's SQLiteAckQueue (put; get + ack) and litequeue (put; pop + done), where installed
(pip install persist-queue litequeue).

Redis (a redis-server started on a free port in a temporary directory, AOF off, as a cache would run):
  gilfree    put_many in batches of 100, then get_many(100) + ack_many
  redis-py   the same workload by hand, pipelined: XADD x100 per pipeline, XREADGROUP COUNT 100, XACK x100
             per pipeline: the floor for any Redis Streams queue
Each figure is the median of --repeat runs with min-max.

    python benchmarks/bench_durable.py [--messages 2000] [--repeat 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import gilfree


def timed(fn: Callable[[str], float], repeat: int) -> dict[str, float]:
    """fn(fresh directory) -> messages/s, repeated; the median and spread."""
    rates = []
    for _ in range(repeat):
        d = tempfile.mkdtemp(prefix="gilfree-bench-durable-")
        try:
            rates.append(fn(d))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    rates.sort()
    return {"median": statistics.median(rates), "min": rates[0], "max": rates[-1]}


def gilfree_put(n: int) -> Callable[[str], float]:
    def run(d: str) -> float:
        with gilfree.DurableQueue(os.path.join(d, "q.db")) as q:
            t0 = time.perf_counter()
            for i in range(n):
                q.put(i)
            return n / (time.perf_counter() - t0)
    return run


def gilfree_put_many(n: int) -> Callable[[str], float]:
    def run(d: str) -> float:
        with gilfree.DurableQueue(os.path.join(d, "q.db")) as q:
            t0 = time.perf_counter()
            for i in range(0, n, 1000):
                q.put_many(range(i, min(n, i + 1000)))
            return n / (time.perf_counter() - t0)
    return run


def gilfree_get_ack(n: int, prefetch: int = 1) -> Callable[[str], float]:
    def run(d: str) -> float:
        with gilfree.DurableQueue(os.path.join(d, "q.db")) as q:
            c = q.consumer("g", prefetch=prefetch)
            q.put_many(range(n))
            t0 = time.perf_counter()
            for _ in range(n):
                c.get(timeout=10).ack()
            return n / (time.perf_counter() - t0)
    return run


def sqlite_floor(n: int) -> Callable[[str], float]:
    """A bare sqlite3 INSERT in its own transaction, WAL mode, synchronous=NORMAL: what any durable put
    on SQLite costs at least."""
    import sqlite3

    def run(d: str) -> float:
        c = sqlite3.connect(os.path.join(d, "floor.db"), isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB)")
        body = b"\x80\x05K\x01."
        t0 = time.perf_counter()
        for _ in range(n):
            c.execute("INSERT INTO t(body) VALUES(?)", (body,))
        dt = time.perf_counter() - t0
        c.close()
        return n / dt
    return run


def persist_put(n: int) -> Callable[[str], float]:
    import persistqueue

    def run(d: str) -> float:
        q = persistqueue.SQLiteAckQueue(os.path.join(d, "pq"), auto_commit=True)
        t0 = time.perf_counter()
        for i in range(n):
            q.put(i)
        return n / (time.perf_counter() - t0)
    return run


def persist_get_ack(n: int) -> Callable[[str], float]:
    import persistqueue

    def run(d: str) -> float:
        q = persistqueue.SQLiteAckQueue(os.path.join(d, "pq"), auto_commit=True)
        for i in range(n):
            q.put(i)
        t0 = time.perf_counter()
        for _ in range(n):
            q.ack(q.get())
        return n / (time.perf_counter() - t0)
    return run


def lite_put(n: int) -> Callable[[str], float]:
    import litequeue

    def run(d: str) -> float:
        q = litequeue.LiteQueue(os.path.join(d, "lq.db"))
        t0 = time.perf_counter()
        for i in range(n):
            q.put(str(i))
        dt = time.perf_counter() - t0
        q.close()
        return n / dt
    return run


def lite_get_ack(n: int) -> Callable[[str], float]:
    import litequeue

    def run(d: str) -> float:
        q = litequeue.LiteQueue(os.path.join(d, "lq.db"))
        for i in range(n):
            q.put(str(i))
        t0 = time.perf_counter()
        for _ in range(n):
            q.done(q.pop().message_id)
        dt = time.perf_counter() - t0
        q.close()
        return n / dt
    return run


# ---- Redis ------------------------------------------------------------------------------------------------

class Server:
    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.dir = tempfile.mkdtemp(prefix="gilfree-bench-redis-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                                      "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_gilfree(server: Server, n: int) -> Callable[[str], float]:
    def run(_: str) -> float:
        server.client.flushall()
        with gilfree.DurableQueue(server.url) as q:
            c = q.consumer("g")
            t0 = time.perf_counter()
            for i in range(0, n, 100):
                q.put_many(range(i, min(n, i + 100)))
            got = 0
            while got < n:
                msgs = c.get_many(100, timeout=10)
                c.ack_many(msgs)
                got += len(msgs)
            return n / (time.perf_counter() - t0)
    return run


def redis_raw(server: Server, n: int) -> Callable[[str], float]:
    import pickle

    def run(_: str) -> float:
        r = server.client
        r.flushall()
        r.xgroup_create("raw", "g", id="0", mkstream=True)
        t0 = time.perf_counter()
        for i in range(0, n, 100):
            p = r.pipeline(transaction=True)
            for v in range(i, min(n, i + 100)):
                p.xadd("raw", {"b": pickle.dumps(v)})
            p.execute()
        got = 0
        while got < n:
            resp = r.xreadgroup("g", "c", {"raw": ">"}, count=100, block=1000)
            entries = resp[0][1]
            values = [pickle.loads(f[b"b"]) for _, f in entries]
            p = r.pipeline(transaction=False)
            for eid, _ in entries:
                p.xack("raw", "g", eid)
            p.execute()
            got += len(values)
        return n / (time.perf_counter() - t0)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    n, rep = args.messages, args.repeat
    rows: dict[str, dict[str, float]] = {}
    skipped: list[str] = []

    def row(name: str, make: Callable[[], Callable[[str], float]]) -> None:
        try:
            fn = make()
        except (ImportError, RuntimeError) as e:
            skipped.append(f"{name}: {e}")
            return
        rows[name] = timed(fn, rep)
        r = rows[name]
        print(f"  {name:40} {r['median']:10.0f} msg/s ({r['min']:.0f}–{r['max']:.0f})", flush=True)

    print(f"bench_durable: {n} messages, median of {rep} (min–max); Python {sys.version.split()[0]}, "
          f"SQLite {__import__('sqlite3').sqlite_version}, {os.cpu_count()} CPUs")
    row("bare sqlite3 INSERT, WAL, NORMAL (floor)", lambda: sqlite_floor(n))
    row("gilfree SQLite put", lambda: gilfree_put(n))
    row("gilfree SQLite put_many (1,000 a batch)", lambda: gilfree_put_many(max(n, 20_000)))
    row("gilfree SQLite get+ack", lambda: gilfree_get_ack(n))
    row("gilfree SQLite get+ack, prefetch=32", lambda: gilfree_get_ack(n, 32))
    row("persist-queue SQLiteAckQueue put", lambda: persist_put(n))
    row("persist-queue SQLiteAckQueue get+ack", lambda: persist_get_ack(n))
    row("litequeue put", lambda: lite_put(n))
    row("litequeue pop+done", lambda: lite_get_ack(n))
    server = None
    try:
        server = Server()
        row("gilfree Redis put_many+get_many+ack_many", lambda: redis_gilfree(server, max(n, 10_000)))  # type: ignore[arg-type]
        row("redis-py pipelined XADD+XREADGROUP+XACK", lambda: redis_raw(server, max(n, 10_000)))  # type: ignore[arg-type]
    except (ImportError, RuntimeError) as e:
        skipped.append(f"Redis: {e}")
    finally:
        if server is not None:
            server.stop()

    def ratio(a: str, b: str) -> float | None:
        return rows[a]["median"] / rows[b]["median"] if a in rows and b in rows else None

    ratios = {"put vs the bare INSERT": ratio("gilfree SQLite put", "bare sqlite3 INSERT, WAL, NORMAL (floor)"),
              "put vs persist-queue": ratio("gilfree SQLite put", "persist-queue SQLiteAckQueue put"),
              "get+ack vs persist-queue": ratio("gilfree SQLite get+ack", "persist-queue SQLiteAckQueue get+ack"),
              "get+ack prefetch=32 vs persist-queue": ratio("gilfree SQLite get+ack, prefetch=32",
                                                            "persist-queue SQLiteAckQueue get+ack"),
              "put vs litequeue": ratio("gilfree SQLite put", "litequeue put"),
              "get+ack vs litequeue": ratio("gilfree SQLite get+ack", "litequeue pop+done"),
              "Redis: raw redis-py / gilfree": ratio("redis-py pipelined XADD+XREADGROUP+XACK",
                                                     "gilfree Redis put_many+get_many+ack_many")}
    print("ratios (same run):")
    for k, v in ratios.items():
        if v is not None:
            print(f"  {k:32} {v:6.2f}x")
    for s in skipped:
        print(f"skipped: {s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"messages": n, "repeat": rep, "rows": rows, "ratios": ratios, "skipped": skipped}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
