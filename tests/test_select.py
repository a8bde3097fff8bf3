"""gilfree.select: each sentence of the contract (README, "select")."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from conftest import Background, scaled, wait_until

import gilfree
from gilfree import CLOSED, Channel, ChannelClosed, default, select


def test_returns_index_and_value_of_the_ready_case() -> None:
    a: Channel[str] = Channel(1)
    b: Channel[str] = Channel(1)
    b.send("b")
    assert select(a.recv, b.recv) == (1, "b")
    a.send("a")
    assert select(a.recv, b.recv) == (0, "a")


def test_performs_exactly_one_case() -> None:
    a: Channel[int] = Channel(5)
    b: Channel[int] = Channel(5)
    out: Channel[int] = Channel(5)
    a.send(1)
    b.send(2)
    i, v = select(a.recv, b.recv, (out.send, 9))
    assert len(a) + len(b) + len(out) == (3 if i == 2 else 1)
    if i == 2:
        assert v is None and out.recv() == 9 and len(a) == 1 and len(b) == 1
    else:
        assert v == (1, 2)[i] and len(out) == 0


def test_send_case_returns_none_and_delivers() -> None:
    ch: Channel[str] = Channel(1)
    assert select((ch.send, "x")) == (0, None)
    assert ch.recv() == "x"


def test_blocking_select_woken_by_a_sender() -> None:
    a: Channel[int] = Channel()
    b: Channel[int] = Channel()
    r = Background(lambda: select(a.recv, b.recv, timeout=5))
    wait_until(lambda: a._waiters() == (1, 0) and b._waiters() == (1, 0))
    b.send(7)
    assert r.join() == (1, 7)
    # the losing waiter was withdrawn from a
    assert a._waiters() == (0, 0)


def test_blocking_select_send_case_woken_by_a_receiver() -> None:
    a: Channel[int] = Channel()
    b: Channel[int] = Channel()
    s = Background(lambda: select((a.send, 1), (b.send, 2), timeout=5))
    wait_until(lambda: a._waiters() == (0, 1) and b._waiters() == (0, 1))
    assert a.recv() == 1
    assert s.join() == (0, None)
    with pytest.raises(gilfree.WouldBlock):
        b.recv_nowait()  # the other send was withdrawn, nothing delivered


def test_default_makes_it_non_blocking() -> None:
    ch: Channel[int] = Channel(1)
    assert select(ch.recv, default) == (1, None)
    assert select(default, ch.recv) == (0, None)
    ch.send(3)
    assert select(ch.recv, default) == (0, 3)
    assert select(default) == (0, None)


def test_none_is_never_ready() -> None:
    ch: Channel[int] = Channel(1)
    assert select(None, default) == (1, None)
    with pytest.raises(TimeoutError):
        select(None, timeout=0.02)
    ch.send(1)
    assert select(None, ch.recv, None) == (1, 1)


def test_no_cases_with_timeout() -> None:
    with pytest.raises(TimeoutError):
        select(timeout=0.01)


@pytest.mark.parametrize("bad", [1, "x", lambda: None, (1, 2), ("x",)])
def test_bad_cases_are_type_errors(bad: object) -> None:
    with pytest.raises(TypeError, match="case 0"):
        select(bad)  # type: ignore[arg-type]


def test_bad_case_shapes_are_type_errors() -> None:
    ch: Channel[int] = Channel(1)
    for bad in (ch.send, (ch.recv, 1), (ch.send,), (ch.send, 1, 2), ch.close, ch.recv_nowait, [ch.send, 1],
                ch):
        with pytest.raises(TypeError):
            select(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="default"):
        select(default, default)
    with pytest.raises(TypeError, match="keyword"):
        select(ch.recv, bogus=1)  # type: ignore[call-arg]
    assert len(ch) == 0


def test_recv_on_closed_drained_yields_closed() -> None:
    ch: Channel[int] = Channel(2)
    ch.send(1)
    ch.close()
    assert select(ch.recv) == (0, 1)
    assert select(ch.recv) == (0, CLOSED)
    assert select(ch.recv, default) == (0, CLOSED)


def test_send_on_closed_raises() -> None:
    ch: Channel[int] = Channel(2)
    ch.close()
    with pytest.raises(ChannelClosed):
        select((ch.send, 1))


def test_close_wakes_a_blocked_select() -> None:
    a: Channel[int] = Channel()
    b: Channel[int] = Channel()
    r = Background(lambda: select(a.recv, b.recv, timeout=5))
    wait_until(lambda: a._waiters() == (1, 0))
    a.close()
    assert r.join() == (0, CLOSED)
    s = Background(lambda: select((b.send, 1), timeout=5))
    wait_until(lambda: b._waiters() == (0, 1))
    b.close()
    with pytest.raises(ChannelClosed):
        s.join()


def test_timeout() -> None:
    a: Channel[int] = Channel()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        select(a.recv, (a.send, 1), timeout=0.1)
    assert time.monotonic() - t0 >= 0.09
    assert a._waiters() == (0, 0)


def test_fairness_chi_square() -> None:
    """With every case ready, each is chosen with probability 1/k (chi-square test, p = 0.001). A uniform
    select fails one sample in a thousand by chance: a second, independent sample must fail too (p = 1e-6),
    while a biased one fails both."""
    k, n = 4, 10_000
    chans: list[Channel[int]] = [Channel(None) for _ in range(k)]
    samples = []
    for _ in range(2):
        for ch in chans:
            ch.send_many([0] * n)
        counts = Counter(select(*(ch.recv for ch in chans))[0] for _ in range(n))
        expected = n / k
        chi2 = sum((counts[i] - expected) ** 2 / expected for i in range(k))
        samples.append((chi2, counts))
        if chi2 < 16.27:  # chi-square(3 dof) at p = 0.001
            return
        for ch in chans:
            while len(ch):
                ch.recv_nowait()
    raise AssertionError(f"select is not uniform: {samples}")


def test_same_channel_twice() -> None:
    ch: Channel[int] = Channel(1)
    ch.send(5)
    assert select(ch.recv, ch.recv)[1] == 5
    i, v = select((ch.send, 1), ch.recv)
    assert (i, v) == (0, None)
    assert ch.recv() == 1


def test_send_and_recv_on_one_unbuffered_channel_do_not_match_themselves() -> None:
    ch: Channel[int] = Channel()
    with pytest.raises(TimeoutError):
        select((ch.send, 1), ch.recv, timeout=0.05)


def test_opposite_lock_orders_do_not_deadlock() -> None:
    a: Channel[int] = Channel()
    b: Channel[int] = Channel()
    n = scaled(5_000)
    done = threading.Event()

    def selector(first: Channel[int], second: Channel[int]) -> int:
        got = 0
        while got < n:
            select(first.recv, (second.send, 1), timeout=10)
            got += 1
        return got

    def drain() -> None:
        while not done.is_set():
            try:
                select(a.recv, b.recv, (a.send, 0), (b.send, 0), timeout=0.05)
            except TimeoutError:
                pass

    x = Background(selector, a, b)
    y = Background(selector, b, a)
    z = Background(drain)
    assert x.join(60) == n and y.join(60) == n
    done.set()
    z.join()


def test_many_cases() -> None:
    chans: list[Channel[int]] = [Channel(1) for _ in range(50)]
    chans[37].send(37)
    assert select(*(c.recv for c in chans)) == (37, 37)
    r = Background(lambda: select(*(c.recv for c in chans), timeout=5))
    wait_until(lambda: chans[12]._waiters() == (1, 0))
    chans[12].send(12)
    assert r.join() == (12, 12)
    assert all(c._waiters() == (0, 0) for c in chans)


def test_select_with_refcounts_balanced() -> None:
    import sys

    obj = object()
    base = sys.getrefcount(obj)
    a: Channel[object] = Channel()
    for _ in range(3):
        with pytest.raises(TimeoutError):
            select((a.send, obj), (a.send, obj), timeout=0.01)
        assert select((a.send, obj), default) == (1, None)
    assert sys.getrefcount(obj) == base


# ---- timers -----------------------------------------------------------------------------------------------


def test_after_delivers_once() -> None:
    t0 = time.monotonic()
    t = gilfree.after(0.1)
    ch: Channel[int] = Channel()
    i, v = select(ch.recv, t.recv, timeout=5)
    elapsed = time.monotonic() - t0
    assert i == 1 and isinstance(v, float) and 0.09 <= elapsed < 2
    with pytest.raises(TimeoutError):
        t.recv(timeout=0.15)  # only once
    assert not t.closed


def test_after_zero_and_bad_arguments() -> None:
    assert isinstance(gilfree.after(0).recv(timeout=5), float)
    with pytest.raises(ValueError):
        gilfree.after(-1)
    with pytest.raises(TypeError):
        gilfree.after("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        gilfree.tick(0)
    with pytest.raises(ValueError):
        gilfree.tick(float("nan"))


def test_tick_delivers_periodically_and_drops_missed_ticks() -> None:
    ticker = gilfree.tick(0.02)
    times = [ticker.recv(timeout=5) for _ in range(5)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g > 0.005 for g in gaps)
    time.sleep(0.2)  # ~10 ticks pass unread: capacity 1 keeps only one
    assert len(ticker) <= 1
    ticker.stop()
    assert ticker.closed
    rest = list(ticker)  # at most the one buffered tick, then the loop ends
    assert len(rest) <= 1


def test_tick_in_select_loop() -> None:
    ticker = gilfree.tick(0.01)
    quit_: Channel[None] = Channel()
    threading.Timer(0.15, quit_.close).start()
    ticks = 0
    while True:
        i, _ = select(ticker.recv, quit_.recv, timeout=5)
        if i == 1:
            break
        ticks += 1
    ticker.stop()
    assert ticks >= 3


@pytest.mark.nosanitizer  # fork() of a threaded process: sanitizer runtimes misreport in the child
def test_timers_work_in_a_forked_child() -> None:
    import os
    import warnings

    gilfree.after(0.01).recv(timeout=5)  # the timer thread is running in the parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads running
        pid = os.fork()
    if pid == 0:  # child: a fresh timer thread serves it
        try:
            ok = isinstance(gilfree.after(0.01).recv(timeout=5), float)
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_select_with_no_cases_raises_instead_of_blocking_for_ever() -> None:
    with pytest.raises(ValueError, match="at least one case"):
        select()
    with pytest.raises(ValueError, match="at least one case"):
        select(timeout=None)
