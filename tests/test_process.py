"""gilfree.ProcessChannel: a bounded channel between processes, its buffer in shared memory."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Iterator

import pytest
from conftest import SANITIZER, Background, assert_gil_released, interrupt_child, scaled

import gilfree
from gilfree import ChannelClosed, ProcessChannel, WouldBlock

# Worker processes start without the sanitizer runtime (or with it, under fork): the plain build covers them.
multiproc = pytest.mark.skipif(bool(SANITIZER), reason="worker processes under a sanitizer")
pytestmark = pytest.mark.usefixtures("dev_shm_clean")


# ---- in one process ---------------------------------------------------------------------------------------


def test_values_round_trip_in_order() -> None:
    with ProcessChannel(8) as ch:
        for v in [1, "two", (3,), {"four": 4}, None, b"six"]:
            ch.send(v)
        assert len(ch) == 6
        assert [ch.recv() for _ in range(6)] == [1, "two", (3,), {"four": 4}, None, b"six"]
    assert ch.closed
    ch.release()
    ch.release()  # idempotent


def test_capacity_counts_messages_and_gives_backpressure() -> None:
    ch: ProcessChannel[int] = ProcessChannel(2)
    ch.send(1)
    ch.send_nowait(2)
    with pytest.raises(WouldBlock):
        ch.send_nowait(3)
    with pytest.raises(TimeoutError):
        ch.send(3, timeout=0.05)
    assert ch.recv_nowait() == 1
    ch.send_nowait(3)
    assert ch.recv_many(10) == [2, 3]
    with pytest.raises(WouldBlock):
        ch.recv_nowait()
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0.05)
    assert ch.capacity == 2
    ch.release()


def test_buffer_bytes_bound_too() -> None:
    ch: ProcessChannel[bytes] = ProcessChannel(100, buffer_size=4096)
    ch.send_bytes(b"x" * 3000)
    with pytest.raises(WouldBlock):
        ch._h.send_bytes(b"y" * 2000, None, True)
    assert ch.recv_bytes() == b"x" * 3000
    ch.send_bytes(b"y" * 2000)  # room again (the ring wraps around)
    ch.send_bytes(b"z" * 1500)
    assert ch.recv_bytes() == b"y" * 2000 and ch.recv_bytes() == b"z" * 1500
    with pytest.raises(ValueError, match="does not fit"):
        ch.send_bytes(b"w" * 5000)
    assert len(ch) == 0  # nothing was sent
    ch.release()


def test_default_buffer_holds_a_1_mib_message() -> None:
    ch: ProcessChannel[bytes] = ProcessChannel()
    big = os.urandom(1 << 20)
    ch.send(big)
    assert ch.recv() == big
    ch.send_bytes(big)
    buf = bytearray(1 << 20)
    assert ch.recv_bytes_into(buf) == 1 << 20 and buf == big
    ch.release()


def test_recv_bytes_into_too_small_takes_nothing() -> None:
    ch: ProcessChannel[bytes] = ProcessChannel(4)
    ch.send_bytes(b"hello world")
    small = bytearray(5)
    with pytest.raises(ValueError, match="nothing was taken"):
        ch.recv_bytes_into(small)
    view = memoryview(bytearray(64))
    n = ch.recv_bytes_into(view)
    assert bytes(view[:n]) == b"hello world"
    with pytest.raises(TypeError):
        ch.recv_bytes_into(b"immutable")  # type: ignore[arg-type]
    ch.release()


class Unpicklable:
    def __reduce__(self) -> Any:
        raise pickle.PicklingError("no")


def test_unpicklable_raises_at_the_sender_and_sends_nothing() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(4)
    with pytest.raises(pickle.PicklingError):
        ch.send(Unpicklable())
    with pytest.raises(pickle.PicklingError):
        ch.send_many([1, Unpicklable()])
    assert len(ch) == 1 and ch.recv() == 1
    ch.release()


def test_close_drains_then_raises_and_is_idempotent() -> None:
    ch: ProcessChannel[int] = ProcessChannel(4)
    ch.send_many([1, 2])
    ch.close()
    ch.close()
    with pytest.raises(ChannelClosed):
        ch.send(3)
    assert list(ch) == [1, 2]
    with pytest.raises(ChannelClosed):
        ch.recv()
    with pytest.raises(ChannelClosed):
        ch.recv_nowait()
    ch.release()


def test_close_wakes_blocked_waiters_in_this_process() -> None:
    ch: ProcessChannel[int] = ProcessChannel(1)
    got: list[BaseException] = []

    def wait() -> None:
        try:
            ch.recv()
        except ChannelClosed as e:
            got.append(e)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.05)
    ch.close()
    t.join(5)
    assert not t.is_alive() and len(got) == 1
    ch.release()


def test_send_many_reports_what_was_sent() -> None:
    ch: ProcessChannel[int] = ProcessChannel(3)
    with pytest.raises(TimeoutError) as e:
        ch.send_many(range(10), timeout=0.05)
    assert e.value.sent == 3  # type: ignore[attr-defined]
    ch.release()


@pytest.mark.parametrize("kwargs,exc", [({"capacity": 0}, ValueError), ({"capacity": -1}, ValueError),
                                        ({"capacity": None}, TypeError), ({"capacity": "4"}, TypeError),
                                        ({"capacity": True}, TypeError), ({"buffer_size": 10}, ValueError),
                                        ({"buffer_size": 2**41}, ValueError), ({"buffer_size": 1.5}, TypeError)])
def test_bad_arguments(kwargs: dict[str, Any], exc: type[BaseException]) -> None:
    with pytest.raises(exc):
        ProcessChannel(**kwargs)


def test_bad_timeouts_and_released_handles() -> None:
    ch: ProcessChannel[int] = ProcessChannel(1)
    with pytest.raises(ValueError):
        ch.recv(timeout=-1)
    with pytest.raises(TypeError):
        ch.recv(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ch.recv_many(0)
    ch.release()
    with pytest.raises(ValueError, match="released"):
        ch.send(1)
    assert "released" in repr(ch)


def test_release_while_another_thread_waits_on_the_handle() -> None:
    """The mapping stays until the operations in progress on the handle return; later ones get ValueError."""
    for _ in range(scaled(50, 10)):
        ch: ProcessChannel[int] = ProcessChannel(1)
        waiters = [Background(ch.recv, 0.05) for _ in range(3)]
        time.sleep(0.005)
        ch.release()
        for w in waiters:
            with pytest.raises((TimeoutError, ValueError)):
                w.join()
        with pytest.raises(ValueError, match="released"):
            ch.recv_nowait()
        assert ch._h.released


def test_the_gil_is_released_while_waiting() -> None:
    ch: ProcessChannel[int] = ProcessChannel(1)
    assert_gil_released(lambda: ch.recv(timeout=0.2))
    ch.release()


def test_select_does_not_take_it() -> None:
    ch: ProcessChannel[int] = ProcessChannel(1)
    with pytest.raises(TypeError):
        gilfree.select(ch.recv)  # type: ignore[arg-type]
    ch.release()


# ---- across processes ---------------------------------------------------------------------------------------


def _echo_child(inbox: ProcessChannel[Any], outbox: ProcessChannel[Any]) -> None:
    for v in inbox:
        outbox.send(("echo", v))
    outbox.close()


@multiproc
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_passes_to_a_process_under_every_start_method(method: str) -> None:
    ctx = mp.get_context(method)
    inbox: ProcessChannel[Any] = ProcessChannel(4)
    outbox: ProcessChannel[Any] = ProcessChannel(4)
    p = ctx.Process(target=_echo_child, args=(inbox, outbox))
    p.start()
    inbox.send_many([1, "a", (2, 3)])
    inbox.close()
    assert list(outbox) == [("echo", 1), ("echo", "a"), ("echo", (2, 3))]
    p.join(30)
    assert p.exitcode == 0
    inbox.release()
    outbox.release()


def _produce(ch: ProcessChannel[tuple[int, int]], who: int, n: int) -> None:
    for i in range(n):
        ch.send((who, i))


def _consume(ch: ProcessChannel[tuple[int, int]], out: ProcessChannel[list[tuple[int, int]]]) -> None:
    got = []
    for v in ch:
        got.append(v)
    out.send(got)


@multiproc
def test_no_loss_no_duplicate_4x4_with_close_racing() -> None:
    ctx = mp.get_context("fork")
    n = scaled(25_000, 2_000)
    ch: ProcessChannel[tuple[int, int]] = ProcessChannel(64)
    out: ProcessChannel[list[tuple[int, int]]] = ProcessChannel(8, buffer_size=64 << 20)
    producers = [ctx.Process(target=_produce, args=(ch, w, n)) for w in range(4)]
    consumers = [ctx.Process(target=_consume, args=(ch, out)) for _ in range(4)]
    for p in producers + consumers:
        p.start()
    for p in producers:
        p.join(120)
    ch.close()  # races the consumers still draining
    got = [v for _ in consumers for v in out.recv(timeout=120)]
    for p in consumers:
        p.join(60)
    assert sorted(got) == sorted((w, i) for w in range(4) for i in range(n))
    # each producer's values arrive in order within each consumer
    ch.release()
    out.release()


def _stamped(who: int, seq: int) -> bytes:
    body = f"{who}:{seq}:".encode() * (1 + seq % 37)
    return hashlib.sha1(body).digest() + body


def _kill_producer(ch: ProcessChannel[bytes], who: int) -> None:
    seq = 0
    while True:
        ch.send_bytes(_stamped(who, seq))
        seq += 1


def _kill_consumer(ch: ProcessChannel[bytes], fd: int) -> None:
    while True:
        try:
            m = ch.recv_bytes()
        except ChannelClosed:
            return
        os.write(fd, len(m).to_bytes(4, "big") + m)


@multiproc
def test_sigkill_at_any_moment_never_deadlocks_or_tears(tmp_path: Any) -> None:
    """Rounds of: two producers and two consumers (processes) streaming; SIGKILL one of them at a random
    moment (maybe while it holds the lock); the survivors go on; nothing is torn or duplicated."""
    ctx = mp.get_context("fork")
    rounds = scaled(200, 20) if os.environ.get("GILFREE_STRESS_SCALE") else 40
    for r in range(rounds):
        ch: ProcessChannel[bytes] = ProcessChannel(16, buffer_size=8192)
        # each consumer appends the messages it got to a log of its own, one write each (a consumer killed
        # inside that write may leave a partial last record: a write to a file is not atomic under SIGKILL)
        logs = [tmp_path / f"round{r}-{i}.log" for i in range(2)]
        wfds = [os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND) for log in logs]
        prods = [ctx.Process(target=_kill_producer, args=(ch, w)) for w in range(2)]
        cons = [ctx.Process(target=_kill_consumer, args=(ch, wfd)) for wfd in wfds]
        for p in prods + cons:
            p.start()
        time.sleep(random.uniform(0.001, 0.02))
        victim = random.choice(prods + cons)
        os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
        victim.join(10)
        time.sleep(0.01)
        for p in prods:
            if p is not victim:
                os.kill(p.pid, signal.SIGTERM)  # type: ignore[arg-type]
                p.join(10)
        ch.close()
        # the surviving consumers drain and end: nobody is stuck on a lock a dead process held
        deadline = time.monotonic() + 20
        for c in cons:
            if c is not victim:
                c.join(max(0.1, deadline - time.monotonic()))
                assert c.exitcode == 0, f"round {r}: a consumer did not finish"
        for wfd in wfds:
            os.close(wfd)
        seen = set()
        for c, log in zip(cons, logs):
            data = log.read_bytes()
            pos = 0
            while pos + 4 <= len(data):
                n = int.from_bytes(data[pos:pos + 4], "big")
                if pos + 4 + n > len(data):
                    assert c is victim, f"round {r}: a survivor's log ends in a partial record"
                    break
                m = data[pos + 4:pos + 4 + n]
                pos += 4 + n
                digest, body = m[:20], m[20:]
                assert hashlib.sha1(body).digest() == digest, f"round {r}: a torn message"
                who, seq = body.split(b":")[:2]
                key = (int(who), int(seq))
                assert key not in seen, f"round {r}: a message arrived twice"
                seen.add(key)
        ch.release()


def test_ctrl_c_reaches_a_waiting_main_thread() -> None:
    child = textwrap.dedent(
        """
        import time, gilfree
        ch = gilfree.ProcessChannel(1)
        print("ready", flush=True)
        try:
            ch.recv()
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
        ch.release()
        """
    )
    interrupt_child(child)


def test_a_crashed_creator_leaves_nothing_behind() -> None:
    """The resource tracker unlinks the shared memory of a process that died without releasing it."""
    child = "import os, gilfree; ch = gilfree.ProcessChannel(1); print(ch.name, flush=True); os._exit(1)"
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    name = out.stdout.strip().lstrip("/")
    assert name.startswith("gilfree-")
    deadline = time.monotonic() + 10
    while os.path.exists(f"/dev/shm/{name}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_process_channel_queue_names_get_a_hint_and_it_is_always_true() -> None:
    with ProcessChannel(2) as ch:
        assert bool(ch) is True and len(ch) == 0
        with pytest.raises(AttributeError, match=r"use send\(value\)"):
            ch.put  # type: ignore[attr-defined]


# ---- values in gilfree's encoding, and batches --------------------------------------------------------------

EDGE_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 2**55 - 1, -2**55, 2**55, -2**55 - 1, 2**63 - 1, -2**63, 2**63, -2**63 - 1,
    10**40, 0.0, -0.0, 1.5, float("inf"), float("-inf"), 1e-310, "", "a", "héllo ✓ 日本", "x" * 100_000,
    "lone \ud800 surrogate", b"", b"\x00\x01", b"y" * 100_000, [1, "two"], (3,), {"k": 4.0}, bytearray(b"ba"),
    signal.SIGINT,  # an IntEnum: an int subclass keeps its type
]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and a != a:
        return b != b
    return type(a) is type(b) and a == b and (not isinstance(a, float) or str(a) == str(b))  # -0.0


def test_every_kind_of_value_round_trips_with_its_type() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(64, buffer_size=1 << 20)
    for v in [*EDGE_VALUES, float("nan")]:
        ch.send(v)
        got = ch.recv(timeout=5)
        assert _same(v, got), (v, got)
    assert ch.send_many([*EDGE_VALUES, float("nan")]) == len(EDGE_VALUES) + 1
    got = []
    while len(got) < len(EDGE_VALUES) + 1:
        got += ch.recv_many(7, timeout=5)
    assert all(_same(a, b) for a, b in zip([*EDGE_VALUES, float("nan")], got)), got
    ch.release()


def test_small_ints_take_no_more_room_than_their_pickles_did() -> None:
    """An int that fits 56 bits is one 16-byte record, as a pickled small int was."""
    ch: ProcessChannel[int] = ProcessChannel(1000, buffer_size=16 * 10)
    ch.send_many(range(2**54, 2**54 + 10))
    with pytest.raises(WouldBlock):
        ch.send_nowait(-(2**55))  # the eleventh does not fit
    assert ch.recv_many(100) == list(range(2**54, 2**54 + 10))
    ch.release()


def test_a_pickle_sent_as_bytes_still_arrives_as_its_value() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(4)
    for proto in (0, 2, 5):
        ch.send_bytes(pickle.dumps({"p": proto}, protocol=proto))
        assert ch.recv(timeout=5) == {"p": proto}
    ch.release()


@pytest.mark.parametrize("record,error", [
    (b"\x04\x00", ValueError), (b"\x08" + bytes(3), ValueError), (b"\x05" + bytes(9), ValueError),
    (b"\x01\x00", ValueError), (b"\x06\xff\xfe", UnicodeDecodeError), (b"", ValueError),
])
def test_a_malformed_record_raises_and_the_channel_goes_on(record: bytes, error: type[Exception]) -> None:
    ch: ProcessChannel[Any] = ProcessChannel(8)
    ch.send_bytes(record)
    ch.send(7)
    with pytest.raises(error):
        ch.recv(timeout=5)
    assert ch.recv(timeout=5) == 7
    ch.send(1)
    ch.send_bytes(record)
    ch.send(3)
    with pytest.raises(error) as info:
        ch.recv_many(10)
    assert (info.value.values, info.value.data, info.value.more) == ([1], record, [3])  # type: ignore[attr-defined]
    ch.release()


def test_a_batch_fills_a_small_channel_in_order_while_a_receiver_drains_it() -> None:
    ch: ProcessChannel[int] = ProcessChannel(3, buffer_size=4096)
    n = scaled(20_000, 2_000)
    got: list[int] = []

    def drain() -> None:
        while len(got) < n:
            got.extend(ch.recv_many(5, timeout=30))

    t = threading.Thread(target=drain)
    t.start()
    assert ch.send_many(range(n), timeout=30) == n
    t.join(60)
    assert got == list(range(n))
    ch.release()


def test_a_batchs_values_are_messages_any_receiver_may_take() -> None:
    ch: ProcessChannel[int] = ProcessChannel(100)
    ch.send_many(range(10))
    assert ch.recv(timeout=5) == 0
    assert ch.recv_many(3) == [1, 2, 3]
    assert len(ch) == 6
    assert ch.recv_many(100) == [4, 5, 6, 7, 8, 9]
    ch.release()


def test_recv_many_takes_a_first_message_larger_than_its_round_buffer() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(10, buffer_size=1 << 20)
    big = b"z" * 200_000
    ch.send_many([big, 1, "x" * 70_000, 2])
    assert ch.recv_many(10) == [big, 1]  # the round stops where the next would not fit its buffer
    assert ch.recv_many(10) == ["x" * 70_000, 2]
    ch.release()


def _batch_child(ch: ProcessChannel[Any], n: int) -> None:
    ch.send_many(({"i": i} if i % 7 == 0 else (i if i % 3 else str(i))) for i in range(n))
    ch.close()


def test_batches_cross_processes_in_order_with_mixed_values() -> None:
    ch: ProcessChannel[Any] = ProcessChannel(16, buffer_size=8192)
    n = scaled(30_000, 3_000)
    p = mp.get_context("fork").Process(target=_batch_child, args=(ch, n))
    p.start()
    got: list[Any] = []
    while True:
        try:
            got.extend(ch.recv_many(50, timeout=30))
        except ChannelClosed:
            break
    p.join(30)
    assert got == [({"i": i} if i % 7 == 0 else (i if i % 3 else str(i))) for i in range(n)]
    ch.release()


def _batch_senders(ch: ProcessChannel[int], per: int, threads: int, offset: int) -> None:
    def send(k: int) -> None:
        base = offset + k * per
        for i in range(0, per, 37):  # batches of 37 (the C side writes up to 64 at a time)
            ch.send_many(range(base + i, base + min(per, i + 37)))

    ts = [threading.Thread(target=send, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def test_batches_from_many_threads_of_two_processes_lose_and_duplicate_nothing() -> None:
    ch: ProcessChannel[int] = ProcessChannel(50, buffer_size=2048)
    per, threads = scaled(20_000, 1_000), 4
    # spawn: TSan cannot start threads in a forked child
    senders = [mp.get_context("spawn").Process(target=_batch_senders, args=(ch, per, threads, j * per * threads))
               for j in range(2)]
    for p in senders:
        p.start()
    got: list[list[int]] = [[] for _ in range(4)]

    def recv(k: int) -> None:
        while True:
            try:
                got[k].extend(ch.recv_many(1 + 13 * k, timeout=60))
            except ChannelClosed:
                return

    rs = [threading.Thread(target=recv, args=(k,)) for k in range(4)]
    for t in rs:
        t.start()
    for p in senders:
        p.join(120)
    ch.close()
    for t in rs:
        t.join(60)
    assert [p.exitcode for p in senders] == [0, 0]
    assert sorted(v for g in got for v in g) == list(range(2 * per * threads))  # each exactly once
    for g in got:  # and one sender thread's values reach each receiver in the order they were sent
        for stream in range(2 * threads):
            mine = [v for v in g if stream * per <= v < (stream + 1) * per]
            assert mine == sorted(mine)
    ch.release()
