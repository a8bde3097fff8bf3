"""gilfree.DurableQueue: the contract, on every backend a test can start here (SQLite always; Redis with a
private redis-server, see conftest's durable_url), and the faults it must survive: consumers and producers
killed with SIGKILL, bad input, many processes at once."""

from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import interrupt_child, wait_until

import gilfree
from gilfree import DurableQueue, LeaseLost
from gilfree.queue import acking

pytestmark = pytest.mark.nosanitizer  # pure Python over SQLite/Redis: the C core is not under test here


def child(code: str, url: str, **kw: Any) -> subprocess.Popen[str]:
    """A Python process running `code` with `url` in scope (and gilfree imported)."""
    prelude = f"import os, sys, time, gilfree\nurl = {url!r}\n"
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def drain(q: DurableQueue, group: str = "default", timeout: float = 0.2) -> list[Any]:
    with q.consumer(group) as c:
        out = []
        while msgs := c.get_many(100, timeout):
            for m in msgs:
                out.append(m.value)
                m.ack()
        return out


# ---- producers and consumers --------------------------------------------------------------------------

def test_put_get_ack(durable_url: str) -> None:
    with DurableQueue(durable_url) as q:
        ids = [q.put({"n": i}, key="k") for i in range(3)]
        assert len(set(ids)) == 3 and all(isinstance(i, str) for i in ids)
        with q.consumer("g") as c:
            msgs = [c.get(timeout=5) for _ in range(3)]
            assert [m.value for m in msgs] == [{"n": 0}, {"n": 1}, {"n": 2}]  # one key: put order
            assert [m.id for m in msgs] == ids and all(m.key == "k" and m.attempt == 1 for m in msgs)
            assert q.stats("g")["leased"] == 3
            for m in msgs:
                m.ack()
            st = q.stats("g")
            assert (st["ready"], st["leased"], st["delayed"], st["dead"]) == (0, 0, 0, 0)
            with pytest.raises(TimeoutError):
                c.get(timeout=0.05)


def test_put_many_returns_ids_in_order_and_empty_is_a_no_op(durable_url: str) -> None:
    with DurableQueue(durable_url) as q:
        assert q.put_many([]) == []
        ids = q.put_many(range(100))
        assert len(ids) == 100
        assert drain(q, "g") == list(range(100))


def test_every_group_sees_every_message_and_each_goes_to_one_consumer_of_a_group(durable_url: str) -> None:
    with DurableQueue(durable_url) as q:
        a1, a2, b = q.consumer("indexer"), q.consumer("indexer"), q.consumer("cache")
        q.put_many(range(50))
        got_a: list[int] = []
        while True:
            ms = a1.get_many(7, 0.1) + a2.get_many(7, 0.1)
            if not ms:
                break
            for m in ms:
                got_a.append(m.value)
                m.ack()
        assert sorted(got_a) == list(range(50))  # each message to one consumer of the group
        assert sorted(m.value for m in b.get_many(100, 2)) == list(range(50))  # and all to the other group
        for c in (a1, a2, b):
            c.close()


def test_values_survive_the_process_and_serializers(durable_url: str, tmp_path: Path) -> None:
    with child("q = gilfree.DurableQueue(url)\nq.put({'from': 'a child'}, key='x')\nprint('put', flush=True)\n"
               "time.sleep(60)\n", durable_url) as p:
        assert p.stdout is not None and p.stdout.readline().strip() == "put"
        p.kill()  # put returned: the message is durable, whatever happens to its producer
    with DurableQueue(durable_url) as q:
        assert drain(q) == [{"from": "a child"}]
    with DurableQueue(durable_url, "j", serializer="json") as q:
        q.put([1, "two", None])
        assert drain(q) == [[1, "two", None]]
        with pytest.raises(TypeError):
            q.put(object())
    with DurableQueue(durable_url, "b", serializer="bytes") as q:
        q.put(b"raw")
        assert drain(q) == [b"raw"]
        with pytest.raises(TypeError, match="bytes"):
            q.put("text")


def test_with_message_acks_on_success_and_nacks_on_exception(durable_url: str) -> None:
    with DurableQueue(durable_url, backoff=(0.05, 1.0, 0.05)) as q, q.consumer() as c:
        q.put_many(["ok", "fail"])
        with c.get(timeout=5) as m:
            assert m.value == "ok"
        with pytest.raises(RuntimeError):
            with c.get(timeout=5) as m:
                raise RuntimeError("handler failed")
        again = c.get(timeout=5)  # after the backoff, the same message, attempt 2
        assert (again.value, again.attempt) == ("fail", 2)
        again.ack()
        assert q.stats()["leased"] == 0


def test_nack_delay_backoff_and_dead_letters(durable_url: str) -> None:
    with DurableQueue(durable_url, max_attempts=3, backoff=(0.05, 2.0, 0.1)) as q, q.consumer("g") as c:
        q.put("poison", key="p")
        times = []
        for attempt in (1, 2, 3):
            m = c.get(timeout=5)
            times.append(time.monotonic())
            assert m.attempt == attempt
            m.nack(error="bad value")
        with pytest.raises(TimeoutError):
            c.get(timeout=0.3)  # the third failure was the last: it is dead
        assert times[1] - times[0] >= 0.045 and times[2] - times[1] >= 0.095  # 0.05 then 0.05 * 2
        dead = list(q.dead_letters("g"))
        assert [(d.value, d.key, d.attempts, d.error) for d in dead] == [("poison", "p", 3, "bad value")]
        assert len(q.dead_letters("g")) == 1 and q.stats("g")["dead"] == 1
        assert q.dead_letters("g").requeue() == 1
        m = c.get(timeout=5)
        assert (m.value, m.attempt) == ("poison", 1)  # attempts counted afresh
        m.nack(delay=0)
        m = c.get(timeout=5)
        m.nack(delay=0)
        m = c.get(timeout=5)
        m.nack(delay=0)
        wait_until(lambda: q.stats("g")["dead"] == 1)
        assert q.dead_letters("g").purge() == 1
        assert q.stats("g")["dead"] == 0 and list(q.dead_letters("g")) == []


def test_explicit_nack_delay_and_delayed_put(durable_url: str) -> None:
    with DurableQueue(durable_url) as q, q.consumer() as c:
        q.put("later", delay=0.3)
        q.put("now")
        t0 = time.monotonic()
        assert c.get(timeout=5).value == "now"  # the delayed one does not hold up the next
        assert q.stats()["delayed"] == 1
        m = c.get(timeout=5)
        assert m.value == "later" and time.monotonic() - t0 >= 0.28
        m.nack(delay=0.2)
        t1 = time.monotonic()
        m2 = c.get(timeout=5)
        assert m2.id == m.id and time.monotonic() - t1 >= 0.18
        m2.ack()


def test_an_expired_lease_goes_to_another_consumer_and_the_late_ack_is_refused(durable_url: str) -> None:
    with DurableQueue(durable_url, lease=0.2) as q:
        q.put("job")
        slow, other = q.consumer("g", "slow"), q.consumer("g", "other")
        m1 = slow.get(timeout=5)
        m2 = other.get(timeout=5)  # after the lease
        assert m2.id == m1.id and m2.attempt == 2
        with pytest.raises(LeaseLost):
            m1.extend(10)
        with pytest.raises(LeaseLost):
            m1.ack()
        m2.extend(5)  # a longer hold: nobody else gets it meanwhile
        with pytest.raises(TimeoutError):
            slow.get(timeout=0.4)
        m2.ack()
        with pytest.raises(cf.InvalidStateError, match="already acked"):
            m2.ack()
        slow.close()
        other.close()


# ---- bad input ----------------------------------------------------------------------------------------

def test_bad_input_gets_a_clear_error(tmp_path: Path, durable_url: str) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database " * 100)
    with pytest.raises(ValueError, match="not a usable SQLite database"):
        DurableQueue(str(corrupt))
    for url, msg in [("ftp://host/x", "unknown scheme 'ftp'"), ("sqlite://relative", "sqlite:///"),
                     (":memory:", "name a file"), (str(tmp_path), "is a directory")]:
        with pytest.raises(ValueError, match=msg):
            DurableQueue(url)
    with pytest.raises(TypeError, match="url"):
        DurableQueue(42)  # type: ignore[arg-type]
    for kw, exc, msg in [({"lease": -1}, ValueError, "lease"), ({"lease": 0}, ValueError, "lease"),
                         ({"lease": "1"}, TypeError, "lease"), ({"max_attempts": 0}, ValueError, "max_attempts"),
                         ({"backoff": (1, 0.5, 10)}, ValueError, "factor"), ({"serializer": "xml"}, ValueError,
                                                                              "serializer"),
                         ({"sync": "off"}, ValueError, "sync")]:
        with pytest.raises(exc, match=msg):
            DurableQueue(durable_url, **kw)
    with DurableQueue(durable_url) as q:
        for bad in ("", "a b", "x/y", "-lead", "é", "a" * 200):
            with pytest.raises(ValueError, match="group"):
                q.consumer(bad)
        with pytest.raises(TypeError, match="group"):
            q.consumer(3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="name"):
            DurableQueue(durable_url, "bad name")
        before = q.stats()
        with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
            q.put(threading.Lock())  # unpicklable: raised at put
        with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
            q.put_many([1, 2, threading.Lock()])  # nothing of the batch is written
        assert q.stats() == before
        with pytest.raises(TypeError, match="key"):
            q.put(1, key=5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="delay"):
            q.put(1, delay=-1)
        with q.consumer() as c:
            with pytest.raises(ValueError, match="n must"):
                c.get_many(0)
        assert drain(q) == []


# ---- faults -------------------------------------------------------------------------------------------

def test_a_consumer_killed_mid_handler_has_its_message_redelivered_once(durable_url: str) -> None:
    with DurableQueue(durable_url, lease=1.0) as q:
        q.put("work")
        q.consumer("g")  # the group exists before the child takes from it
        with child("""
                q = gilfree.DurableQueue(url, lease=1.0)
                m = q.consumer('g', 'victim').get(timeout=10)
                print('handling', m.id, flush=True)
                time.sleep(60)
                """, durable_url) as p:
            assert p.stdout is not None
            line = p.stdout.readline().split()
            assert line and line[0] == "handling", p.stderr.read() if p.stderr else ""
            os.kill(p.pid, signal.SIGKILL)
        with q.consumer("g", "survivor") as c:
            m = c.get(timeout=10)  # after the lease
            assert (m.id, m.value, m.attempt) == (line[1], "work", 2)  # it ran at most twice
            m.ack()
            with pytest.raises(TimeoutError):
                c.get(timeout=1.2)
        assert q.stats("g")["leased"] == 0


def test_a_producer_killed_inside_put_many_leaves_all_or_none(durable_url: str) -> None:
    batch = 20_000
    counts = []
    for delay in (0.05, 0.15, 0.3, 0.6):
        name = f"batch{int(delay * 100)}"
        with child(f"""
                q = gilfree.DurableQueue(url, {name!r})
                print('go', flush=True)
                while True:
                    q.put_many(range({batch}))
                """, durable_url) as p:
            assert p.stdout is not None and p.stdout.readline().strip() == "go"
            time.sleep(delay)
            os.kill(p.pid, signal.SIGKILL)
        with DurableQueue(durable_url, name) as q:
            n = q.stats()["ready"]
            counts.append(n)
            assert n % batch == 0, f"killed inside put_many: {n} messages, not a multiple of {batch}"
    assert any(counts), counts


def _stress_consumer(url: str, group: str, seed: int) -> None:  # a consumer process (fork)
    q = DurableQueue(url, lease=1.0, max_attempts=3, backoff=(0.01, 1.0, 0.01))
    with q.consumer(group, f"c{seed}") as c:
        for msg in c:
            try:
                with msg:
                    if msg.value % 10 == 3:  # 10% of the handlers raise, every time
                        raise ValueError(msg.value)
            except ValueError:
                pass


def _stress_producer(url: str, first: int, n: int) -> None:
    q = DurableQueue(url)
    for i in range(first, first + n, 50):
        q.put_many(range(i, min(first + n, i + 50)))


def test_four_producers_four_consumers_kills_and_failing_handlers(durable_url: str) -> None:
    """4 producer processes x 4 consumer processes, 10% of the handlers raising and a consumer killed every
    second: every message ends acked once or dead-lettered after max_attempts; none is lost or left leased."""
    import multiprocessing as mp

    total = 10_000
    ctx = mp.get_context("fork")
    with DurableQueue(durable_url) as q:
        q.consumer("g").close()
    consumers = [ctx.Process(target=_stress_consumer, args=(durable_url, "g", i)) for i in range(4)]
    producers = [ctx.Process(target=_stress_producer, args=(durable_url, k * total // 4, total // 4)) for k in range(4)]
    for p in consumers + producers:
        p.start()
    q = DurableQueue(durable_url)
    deadline = time.monotonic() + 240
    kills, seed = 0, 4
    try:
        for p in producers:
            p.join(120)
            assert p.exitcode == 0
        while time.monotonic() < deadline:
            st = q.stats("g")
            if st["ready"] == st["leased"] == st["delayed"] == 0:
                break
            time.sleep(1.0)
            victim = consumers.pop(0)  # kill one every second, start a fresh one
            os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
            victim.join()
            kills += 1
            fresh = ctx.Process(target=_stress_consumer, args=(durable_url, "g", seed))
            seed += 1
            fresh.start()
            consumers.append(fresh)
        st = q.stats("g")
        assert st["ready"] == st["leased"] == st["delayed"] == 0, st
        dead = sorted(d.value for d in q.dead_letters("g"))
        assert dead == [v for v in range(total) if v % 10 == 3]  # exactly the failing ones, each once
        assert all(d.attempts == 3 for d in q.dead_letters("g"))
        assert kills >= 1
    finally:
        for p in consumers:
            p.kill()
            p.join()
        q.close()


def test_ctrl_c_reaches_a_waiting_get(durable_url: str) -> None:
    interrupt_child(textwrap.dedent(f"""
        import time, gilfree
        q = gilfree.DurableQueue({durable_url!r})
        c = q.consumer()
        print("ready", flush=True)
        try:
            c.get()
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
        """), within=0.5)


# ---- bridges ------------------------------------------------------------------------------------------

def test_channel_bridge_acks_when_the_handler_finishes_with_backpressure(durable_url: str) -> None:
    with DurableQueue(durable_url) as q:
        q.put_many(range(40))
        c = q.consumer("g")
        ch = c.channel(4)
        wait_until(lambda: len(ch) == 4)
        time.sleep(0.1)
        assert q.stats("g")["leased"] <= 5  # the feeder takes only while the channel has room
        first = ch.recv(timeout=5)
        assert q.stats("g")["leased"] >= 1  # read, not yet handled: still leased
        first.ack()
        seen = [first.value]
        with gilfree.ThreadPool(3) as pool:
            futures = [pool.submit(acking(lambda v: v * 2), ch.recv(timeout=5)) for _ in range(39)]
            assert sorted(f.result(10) for f in futures) == [v * 2 for v in range(1, 40)]
        seen += list(range(1, 40))
        wait_until(lambda: q.stats("g")["leased"] == 0)
        c.close()
        with pytest.raises(gilfree.ChannelClosed):
            ch.recv(timeout=5)
        assert q.stats("g")["ready"] == 0


def test_close_hands_back_what_waits_in_the_channel(durable_url: str) -> None:
    with DurableQueue(durable_url) as q:
        q.put_many(range(10))
        c = q.consumer("g")
        ch = c.channel(5)
        wait_until(lambda: len(ch) == 5)
        c.close()
        st = q.stats("g")
        assert st["leased"] == 0 and st["ready"] == 10
        with q.consumer("g") as c2:
            assert [m.attempt for m in c2.get_many(10, 2)][:5] == [1] * 5  # released, not counted


def square(x: int) -> int:
    return x * x


def fails_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError("seven")
    return x


def test_serve_on_a_process_pool_acks_after_the_worker_returns(durable_url: str) -> None:
    with DurableQueue(durable_url, max_attempts=1) as q:
        q.put_many(range(20))
        with q.consumer("g") as c, gilfree.ProcessPool(2) as pool:
            assert c.serve(fails_on_seven, pool, limit=20) == 20
        st = q.stats("g")
        assert (st["ready"], st["leased"], st["dead"]) == (0, 0, 1)
        assert [d.value for d in q.dead_letters("g")] == [7]


def test_a_pipeline_reads_from_one_queue_and_writes_to_another(durable_url: str) -> None:
    with DurableQueue(durable_url, "in") as src, DurableQueue(durable_url, "out") as dst:
        src.put_many(range(30))
        c = src.consumer("g")
        out_ids = []
        it = iter(gilfree.Pipeline(c.channel(8)).map(acking(square), workers=3).map(dst.put))
        for _ in range(30):
            out_ids.append(next(it))
        c.close()
        assert len(out_ids) == 30
        assert sorted(drain(dst, "g")) == sorted(x * x for x in range(30))
        wait_until(lambda: src.stats("g")["leased"] == 0)


# ---- the store ------------------------------------------------------------------------------------------

def test_stats_cli(durable_url: str) -> None:
    with DurableQueue(durable_url) as q:
        q.consumer("g").close()
        q.put_many(range(3))
        q.put("later", delay=60)
    r = subprocess.run([sys.executable, "-m", "gilfree.queue", "stats", durable_url], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    row = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("g ")][0]
    assert row[1:5] == ["3", "0", "1", "0"]
    r = subprocess.run([sys.executable, "-m", "gilfree.queue", "stats", "ftp://x"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "unknown scheme" in r.stderr


def test_sqlite_file_is_in_wal_mode_and_put_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with DurableQueue(str(path), sync="full") as q:
        q.put("x")
        other = sqlite3.connect(str(path))  # another connection sees it at once: committed
        assert other.execute("SELECT COUNT(*) FROM gf_msg").fetchone()[0] == 1
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        other.close()


def test_a_forked_child_uses_its_own_connection(durable_url: str) -> None:
    import multiprocessing as mp

    with DurableQueue(durable_url) as q:
        q.put("before fork")
        p = mp.get_context("fork").Process(target=q.put, args=("from the child",))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert sorted(drain(q)) == ["before fork", "from the child"]


def test_redis_restarted_mid_run_loses_no_acknowledged_put(redis_server: Any, tmp_path: Path) -> None:
    """AOF with fsync always: every put that returned is on disk; producers and consumers ride out the
    restart (they reconnect with backoff)."""
    from conftest import RedisServer

    server = RedisServer(redis_server.exe, tmp_path)  # a server of its own: this one is restarted
    try:
        q = DurableQueue(server.url)
        q.consumer("g").close()
        acknowledged: list[int] = []
        stop = threading.Event()

        def produce() -> None:
            i = 0
            while not stop.is_set():
                q.put(i)
                acknowledged.append(i)
                i += 1
                time.sleep(0.001)

        t = threading.Thread(target=produce)
        t.start()
        wait_until(lambda: len(acknowledged) > 50)
        server.stop()
        time.sleep(0.5)
        server.start()
        after = len(acknowledged)
        wait_until(lambda: len(acknowledged) > after + 50, timeout=30)  # the producer goes on
        stop.set()
        t.join(60)
        got = set(drain(q, "g", timeout=1.0))
        assert set(acknowledged) <= got  # every put that returned survived the restart
        q.close()
    finally:
        server.stop()


def test_a_refused_file_leaves_no_connection_open(tmp_path: Path) -> None:
    import gc
    import warnings

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database" * 100)
    seen: list[Any] = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_value)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            for _ in range(3):
                with pytest.raises(ValueError):
                    DurableQueue(str(corrupt))
            gc.collect()  # an unclosed sqlite3 connection warns as it is collected
    finally:
        sys.unraisablehook = old
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)] and not seen, (caught, seen)


def test_a_child_forked_while_a_waker_is_held_can_still_put(durable_url: str) -> None:
    import multiprocessing as mp

    with DurableQueue(durable_url) as q:
        with q._wake:  # held by this thread at the fork
            p = mp.get_context("fork").Process(target=q.put, args=("from the child",))
            p.start()
        p.join(30)
        if p.exitcode is None:
            p.kill()
            p.join()
        assert p.exitcode == 0
        assert drain(q) == ["from the child"]


def test_threads_that_come_and_go_leave_no_connection_open(tmp_path: Path) -> None:
    """Each thread uses a connection of its own; it is closed when the thread ends, not kept until close().
    (SQLite keeps a closed connection's file descriptor for the next one to reuse while another connection
    of the process holds a lock on the file: the open files stay bounded by the threads alive at once.)"""
    path = str(tmp_path / "q.db")

    def open_files() -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{fd}").startswith(path)
            except OSError:
                pass
        return n

    q = DurableQueue(path)
    q.put(0)
    backend = q._b  # type: ignore[attr-defined]
    assert len(backend._all) == 1
    files = []
    for _ in range(5):
        ts = [threading.Thread(target=q.put, args=(i,)) for i in range(20)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(backend._all) == 1  # the threads' connections were closed as they ended
        files.append(open_files())
    assert max(files) <= 3 + 20 and files[-1] <= files[0] + 5, files  # not 20 more each round
    c = q.consumer("g")
    assert sorted(c.get(timeout=5).value for _ in range(101)) == [0] + sorted(list(range(20)) * 5)
    c.close()
    q.close()
    assert open_files() == 0
