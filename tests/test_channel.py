"""gilfree.Channel: each sentence of the contract (README, "Channel")."""

from __future__ import annotations

import copy
import math
import pickle
import sys
import threading
import time
import re

import pytest
from conftest import Background, wait_until

import gilfree
from gilfree import Channel, ChannelClosed, WouldBlock, default, select

# ---- construction ------------------------------------------------------------------------------------


def test_capacity_kinds() -> None:
    assert Channel().capacity == 0
    assert Channel(0).capacity == 0
    assert Channel(5).capacity == 5
    assert Channel(None).capacity is None
    assert Channel(capacity=3).capacity == 3


@pytest.mark.parametrize("bad", [-1, -100])
def test_negative_capacity_is_value_error(bad: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Channel(bad)


@pytest.mark.parametrize("bad", [1.5, "3", True, [], 2.0])
def test_non_integer_capacity_is_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="capacity"):
        Channel(bad)  # type: ignore[arg-type]


def test_unknown_keyword_is_type_error() -> None:
    with pytest.raises(TypeError):
        Channel(size=3)  # type: ignore[call-arg]


# ---- unbuffered ----------------------------------------------------------------------------------------


def test_unbuffered_send_completes_only_when_received() -> None:
    ch: Channel[int] = Channel()
    sender = Background(ch.send, 42)
    wait_until(lambda: ch._waiters() == (0, 1))
    time.sleep(0.05)
    assert not sender.done.is_set(), "an unbuffered send returned before a receiver took the value"
    assert ch.recv(timeout=5) == 42
    sender.join()
    assert len(ch) == 0


def test_unbuffered_nowait_needs_a_parked_peer() -> None:
    ch: Channel[int] = Channel()
    with pytest.raises(WouldBlock):
        ch.send_nowait(1)
    with pytest.raises(WouldBlock):
        ch.recv_nowait()
    receiver = Background(ch.recv)
    wait_until(lambda: ch._waiters() == (1, 0))
    ch.send_nowait(7)
    assert receiver.join() == 7
    sender = Background(ch.send, 8)
    wait_until(lambda: ch._waiters() == (0, 1))
    assert ch.recv_nowait() == 8
    sender.join()


# ---- bounded and unbounded ----------------------------------------------------------------------------


def test_bounded_blocks_when_full() -> None:
    ch: Channel[int] = Channel(3)
    for i in range(3):
        ch.send(i)
    assert len(ch) == 3
    with pytest.raises(WouldBlock):
        ch.send_nowait(3)
    with pytest.raises(TimeoutError):
        ch.send(3, timeout=0.05)
    sender = Background(ch.send, 3)
    wait_until(lambda: ch._waiters() == (0, 1))
    assert not sender.done.is_set()
    assert ch.recv() == 0  # frees a slot: the parked sender's value moves in, behind the others
    sender.join()
    assert [ch.recv() for _ in range(3)] == [1, 2, 3]


def test_unbounded_never_blocks() -> None:
    ch: Channel[int] = Channel(None)
    for i in range(100_000):
        ch.send_nowait(i)
    assert len(ch) == 100_000
    assert ch.recv_many(100_000) == list(range(100_000))


# ---- send / recv errors ---------------------------------------------------------------------------------


def test_send_on_closed_raises() -> None:
    ch: Channel[int] = Channel(2)
    ch.close()
    with pytest.raises(ChannelClosed):
        ch.send(1)
    with pytest.raises(ChannelClosed):
        ch.send_nowait(1)
    assert len(ch) == 0


@pytest.mark.parametrize("capacity", [0, 1])
def test_send_blocked_then_closed_raises_and_delivers_nothing(capacity: int) -> None:
    ch: Channel[str] = Channel(capacity)
    if capacity:
        ch.send("filler")
    sender = Background(ch.send, "late")
    wait_until(lambda: ch._waiters() == (0, 1))
    ch.close()
    with pytest.raises(ChannelClosed):
        sender.join()
    drained = list(ch)
    assert drained == (["filler"] if capacity else [])


def test_send_timeout_delivers_nothing() -> None:
    ch: Channel[str] = Channel()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        ch.send("x", timeout=0.1)
    assert time.monotonic() - t0 >= 0.09
    assert ch._waiters() == (0, 0)
    with pytest.raises(WouldBlock):
        ch.recv_nowait()


def test_recv_timeout() -> None:
    ch: Channel[int] = Channel(1)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0.1)
    elapsed = time.monotonic() - t0
    assert 0.09 <= elapsed < 2
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0)
    ch.send(1)
    assert ch.recv(timeout=0) == 1


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, float("-inf")])
def test_bad_timeouts_are_value_errors(bad: float) -> None:
    ch: Channel[int] = Channel(1)
    for call in (lambda: ch.send(1, timeout=bad), lambda: ch.recv(timeout=bad),
                 lambda: ch.send_many([1], timeout=bad), lambda: ch.recv_many(1, timeout=bad),
                 lambda: gilfree.select(ch.recv, timeout=bad)):
        with pytest.raises(ValueError, match="timeout"):
            call()
    assert len(ch) == 0  # the failed send delivered nothing


def test_non_number_timeout_is_type_error() -> None:
    ch: Channel[int] = Channel(1)
    with pytest.raises(TypeError, match="timeout"):
        ch.recv(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeout"):
        ch.send(1, timeout=[])  # type: ignore[arg-type]


def test_bad_call_shapes() -> None:
    ch: Channel[int] = Channel(1)
    with pytest.raises(TypeError):
        ch.send()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ch.send(1, 2, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ch.recv(1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ch.send(1, value=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ch.recv(timeout=1, bogus=2)  # type: ignore[call-arg]
    ch.send(value=1, timeout=None)
    assert ch.recv(timeout=None) == 1


def test_infinite_timeout_is_forever() -> None:
    ch: Channel[int] = Channel(1)
    r = Background(ch.recv, math.inf)
    wait_until(lambda: ch._waiters() == (1, 0))
    ch.send(5)
    assert r.join() == 5


# ---- recv after close -----------------------------------------------------------------------------------


def test_close_drains_then_raises() -> None:
    ch: Channel[int] = Channel(5)
    ch.send_many([1, 2, 3])
    ch.close()
    assert ch.closed
    assert ch.recv() == 1
    assert ch.recv_nowait() == 2
    assert ch.recv_many(10) == [3]
    with pytest.raises(ChannelClosed):
        ch.recv()
    with pytest.raises(ChannelClosed):
        ch.recv_nowait()
    with pytest.raises(ChannelClosed):
        ch.recv_many(3)


def test_close_is_idempotent_and_wakes_everyone() -> None:
    ch: Channel[int] = Channel(0)
    receivers = [Background(ch.recv) for _ in range(3)]
    wait_until(lambda: ch._waiters() == (3, 0))
    ch.close()
    ch.close()
    for r in receivers:
        with pytest.raises(ChannelClosed):
            r.join()
    ch2: Channel[int] = Channel(1)
    ch2.send(0)
    senders = [Background(ch2.send, i) for i in range(3)]
    wait_until(lambda: ch2._waiters() == (0, 3))
    ch2.close()
    for s in senders:
        with pytest.raises(ChannelClosed):
            s.join()
    assert list(ch2) == [0]


def test_properties_and_len() -> None:
    ch: Channel[int] = Channel(4)
    assert not ch.closed and len(ch) == 0
    ch.send(1)
    ch.send(2)
    assert len(ch) == 2
    assert "capacity=4" in repr(ch) and "len=2" in repr(ch)
    ch.close()
    assert ch.closed and "closed" in repr(ch)
    with pytest.raises(AttributeError):
        ch.capacity = 3  # type: ignore[misc]


# ---- batches --------------------------------------------------------------------------------------------


def test_send_many_in_order_and_count() -> None:
    ch: Channel[int] = Channel(None)
    assert ch.send_many(range(10)) == 10
    assert ch.send_many(iter([10, 11])) == 2
    assert ch.send_many([]) == 0
    assert ch.recv_many(100) == list(range(12))


def test_send_many_blocks_for_room_and_keeps_order() -> None:
    ch: Channel[int] = Channel(4)
    sender = Background(ch.send_many, range(100))
    got: list[int] = []
    while len(got) < 100:
        got += ch.recv_many(7, timeout=5)
    assert got == list(range(100))
    assert sender.join() == 100


def test_send_many_unbuffered() -> None:
    ch: Channel[int] = Channel(0)
    sender = Background(ch.send_many, range(20))
    got = [ch.recv(timeout=5) for _ in range(20)]
    assert got == list(range(20))
    assert sender.join() == 20


def test_send_many_closed_reports_sent() -> None:
    ch: Channel[int] = Channel(3)
    sender = Background(ch.send_many, range(10))
    wait_until(lambda: ch._waiters() == (0, 1))
    ch.close()
    with pytest.raises(ChannelClosed) as info:
        sender.join()
    assert info.value.sent == 3  # type: ignore[attr-defined]
    assert list(ch) == [0, 1, 2]
    closed: Channel[int] = Channel(3)
    closed.close()
    with pytest.raises(ChannelClosed) as info:
        closed.send_many([1])
    assert info.value.sent == 0  # type: ignore[attr-defined]


def test_send_many_timeout_reports_sent() -> None:
    ch: Channel[int] = Channel(2)
    with pytest.raises(TimeoutError) as info:
        ch.send_many(range(5), timeout=0.05)
    assert info.value.sent == 2  # type: ignore[attr-defined]
    assert ch.recv_many(10) == [0, 1]


def test_send_many_bad_argument() -> None:
    ch: Channel[int] = Channel(2)
    with pytest.raises(TypeError, match="values"):
        ch.send_many(5)  # type: ignore[arg-type]


def test_recv_many_returns_what_is_there() -> None:
    ch: Channel[int] = Channel(10)
    ch.send_many([1, 2, 3])
    assert ch.recv_many(2) == [1, 2]
    assert ch.recv_many(5) == [3]
    with pytest.raises(TimeoutError):
        ch.recv_many(5, timeout=0.02)


def test_recv_many_waits_only_for_the_first() -> None:
    ch: Channel[int] = Channel(10)
    r = Background(ch.recv_many, 5, 5.0)
    wait_until(lambda: ch._waiters() == (1, 0))
    ch.send(1)
    got = r.join()
    assert 1 <= len(got) <= 5 and got[0] == 1


def test_recv_many_takes_parked_senders_of_unbuffered() -> None:
    ch: Channel[int] = Channel(0)
    senders = [Background(ch.send, i) for i in range(3)]
    wait_until(lambda: ch._waiters() == (0, 3))
    got = ch.recv_many(10)
    for s in senders:
        s.join()
    assert sorted(got) == [0, 1, 2]


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-3, ValueError), (1.0, TypeError), ("2", TypeError),
                                     (True, TypeError)])
def test_recv_many_bad_max(bad: object, exc: type[Exception]) -> None:
    ch: Channel[int] = Channel(2)
    with pytest.raises(exc, match="max_items"):
        ch.recv_many(bad)  # type: ignore[arg-type]


# ---- iteration and with ---------------------------------------------------------------------------------


def test_for_loop_until_closed_and_drained() -> None:
    ch: Channel[int] = Channel(2)

    def produce() -> None:
        for i in range(50):
            ch.send(i)
        ch.close()

    p = Background(produce)
    assert list(ch) == list(range(50))
    p.join()


def test_with_closes() -> None:
    with Channel(1) as ch:
        ch.send(1)
    assert ch.closed
    assert list(ch) == [1]
    with pytest.raises(KeyError):
        with Channel() as ch2:
            raise KeyError("propagates")
    assert ch2.closed


# ---- order ----------------------------------------------------------------------------------------------


def test_one_senders_values_arrive_in_order() -> None:
    for cap in (0, 1, 7, None):
        ch: Channel[int] = Channel(cap)
        p = Background(lambda: [ch.send(i) for i in range(2000)] and ch.close())
        assert list(ch) == list(range(2000))
        p.join()


def test_blocked_senders_served_first_come_first_served() -> None:
    ch: Channel[int] = Channel(1)
    ch.send(-1)
    senders = []
    for i in range(6):
        senders.append(Background(ch.send, i))
        wait_until(lambda n=i + 1: ch._waiters() == (0, n))
    assert [ch.recv() for _ in range(7)] == [-1, 0, 1, 2, 3, 4, 5]
    for s in senders:
        s.join()


def test_blocked_receivers_served_first_come_first_served() -> None:
    ch: Channel[int] = Channel(0)
    order: list[tuple[int, int]] = []
    lock = threading.Lock()

    def receive(k: int) -> None:
        v = ch.recv()
        with lock:
            order.append((k, v))

    receivers = []
    for k in range(6):
        receivers.append(Background(receive, k))
        wait_until(lambda n=k + 1: ch._waiters() == (n, 0))
    for v in range(6):
        ch.send(v)
    for r in receivers:
        r.join()
    assert sorted(order) == [(k, k) for k in range(6)]


# ---- the GIL ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["recv", "send", "select"])
def test_blocking_calls_release_the_gil(op: str) -> None:
    ch: Channel[int] = Channel(0)
    calls = {"recv": lambda: ch.recv(timeout=0.5), "send": lambda: ch.send(1, timeout=0.5),
             "select": lambda: gilfree.select(ch.recv, timeout=0.5)}
    blocked = Background(lambda: pytest.raises(TimeoutError, calls[op]))
    # While the other thread waits in C, this one keeps running Python code.
    t0 = time.monotonic()
    spins = 0
    while time.monotonic() - t0 < 0.3:
        spins += 1
    assert not blocked.done.is_set()
    assert spins > 1000
    blocked.join()


# ---- pickling ---------------------------------------------------------------------------------------------


def test_not_picklable() -> None:
    ch: Channel[int] = Channel(1)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot pickle"):
            pickle.dumps(ch, protocol=proto)
    with pytest.raises(TypeError, match="cannot pickle"):
        copy.copy(ch)


def test_exceptions_and_sentinels_pickle() -> None:
    assert pickle.loads(pickle.dumps(gilfree.CLOSED)) is gilfree.CLOSED
    assert pickle.loads(pickle.dumps(gilfree.default)) is gilfree.default
    assert isinstance(pickle.loads(pickle.dumps(ChannelClosed("x"))), ChannelClosed)
    assert repr(gilfree.CLOSED) == "gilfree.CLOSED"


def test_subclass_and_generic_alias() -> None:
    class Mine(Channel[int]):
        pass

    m = Mine(2)
    m.send(1)
    assert gilfree.select(m.recv) == (0, 1)
    assert Channel[int] is not None


def test_weakref() -> None:
    import weakref

    ch: Channel[int] = Channel(1)
    r = weakref.ref(ch)
    assert r() is ch
    del ch
    assert r() is None


def test_refcounts_balanced_after_timeouts_and_nowait() -> None:
    obj = object()
    base = sys.getrefcount(obj)
    ch: Channel[object] = Channel(1)
    ch.send(obj)
    with pytest.raises(TimeoutError):
        ch.send(obj, timeout=0.01)
    with pytest.raises(WouldBlock):
        ch.send_nowait(obj)
    assert sys.getrefcount(obj) == base + 1
    ch.recv()
    assert sys.getrefcount(obj) == base
    ch.close()
    with pytest.raises(ChannelClosed):
        ch.send(obj)
    with pytest.raises(ChannelClosed):
        ch.send_many([obj, obj])
    assert sys.getrefcount(obj) == base


def test_send_many_streams_a_generator_in_bounded_memory() -> None:
    """An iterable that is not a list or tuple is read a chunk at a time: an endless generator works."""
    import itertools

    ch: Channel[int] = Channel(8)
    sender = Background(ch.send_many, itertools.count())
    got = [ch.recv(timeout=5) for _ in range(5000)]
    assert got == list(range(5000))
    ch.close()
    with pytest.raises(ChannelClosed) as info:
        sender.join()
    assert info.value.sent >= 5000  # type: ignore[attr-defined]


def test_send_many_iterator_error_keeps_what_was_sent() -> None:
    def gen():  # type: ignore[no-untyped-def]
        yield from range(300)
        raise KeyError("boom")

    ch: Channel[int] = Channel(None)
    with pytest.raises(KeyError) as info:
        ch.send_many(gen())
    # the first full chunk went out before the error; .sent says how many
    sent = info.value.sent  # type: ignore[attr-defined]
    assert ch.recv_many(1000) == list(range(sent))


@pytest.mark.nosanitizer  # fork() of a threaded process: sanitizer runtimes misreport in the child
def test_forked_child_skips_the_parents_parked_threads() -> None:
    """In a forked child the threads parked on a channel do not exist: a send there must not hand its
    value to one of them (it would vanish); it finds no receiver, as is true in the child."""
    import os
    import warnings

    ch: Channel[int] = Channel()
    receiver = Background(ch.recv, 10.0)
    wait_until(lambda: ch._waiters() == (1, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads running
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert ch._waiters() == (0, 0)
            try:
                ch.send_nowait(1)
            except WouldBlock:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ch.send(5)  # the parent's receiver is still there
    assert receiver.join() == 5


def test_len_never_exceeds_capacity_while_peers_run_lock_free() -> None:
    """len() reads head and tail of the lock-free ring; read one after the other while peers move both, they
    counted values twice (len(Channel(1)) returned up to 8 with the GIL off). And a select's send case with
    a default must not take the default from such a count."""
    for cap in (1, 2, 7):
        ch: Channel[int] = Channel(cap)
        stop = threading.Event()
        seen: list[int] = []

        def churn() -> None:
            while not stop.is_set():
                try:
                    ch.send_nowait(1)
                except WouldBlock:
                    pass
                try:
                    ch.recv_nowait()
                except WouldBlock:
                    pass

        peers = [threading.Thread(target=churn) for _ in range(4)]
        for t in peers:
            t.start()
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            seen.append(len(ch))
        stop.set()
        for t in peers:
            t.join()
        assert max(seen) <= cap, (cap, max(seen))
        while len(ch):
            ch.recv_nowait()
        # with room, a send case is chosen over default: always
        for _ in range(1000):
            assert gilfree.select((ch.send, 0), gilfree.default)[0] == 0
            ch.recv_nowait()


# ---- habits from queue.Queue and Go ----------------------------------------------------------------------

def test_queue_method_names_get_a_hint() -> None:
    ch: Channel[int] = Channel(1)
    for name, hint in [("put", "send(value)"), ("get", "recv()"), ("get_nowait", "recv_nowait()"),
                       ("qsize", "len(ch)"), ("task_done", "close()")]:
        with pytest.raises(AttributeError, match=r"a channel is not a queue.Queue: use " + re.escape(hint)) as ei:
            getattr(ch, name)
        assert ei.value.name == name and ei.value.obj is ch
    with pytest.raises(AttributeError) as ei:
        ch.bogus  # type: ignore[attr-defined]
    assert str(ei.value) == "'Channel' object has no attribute 'bogus'"
    assert not hasattr(ch, "put")


def test_a_channel_is_true_even_when_empty() -> None:
    ch: Channel[int] = Channel(2)
    assert bool(ch) is True and len(ch) == 0
    ch.send(1)
    assert bool(ch) is True and len(ch) == 1


def test_select_on_a_called_recv_says_what_happened() -> None:
    ch: Channel[int] = Channel(1)
    ch.send(5)
    with pytest.raises(TypeError, match=r"not 5 \(pass ch.recv itself, not ch.recv\(\)"):
        select(ch.recv(), default)
