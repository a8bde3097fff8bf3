"""File descriptors and sockets as select cases: readable(f), writable(f), wait_readable, wait_writable."""

from __future__ import annotations

import gc
import os
import resource
import socket
import textwrap
import threading
import time
from collections import Counter
from typing import Any

import pytest
from conftest import SANITIZER, Background, assert_gil_released, interrupt_child, open_fds, wait_until

import gilfree
from gilfree import Channel, default, readable, select, wait_readable, wait_writable, writable


def test_readable_fires_with_the_object_given_and_reads_nothing(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    ch: Channel[int] = Channel()
    assert select(readable(a), ch.recv, default) == (2, None)
    b.send(b"hello")
    index, value = select(ch.recv, readable(a), timeout=1.0)
    assert (index, value) == (1, a) and value is a
    assert a.recv(100) == b"hello"  # nothing was read for us


def test_writable_and_int_descriptors(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    assert select(writable(a)) == (0, a)
    index, value = select(writable(a.fileno()), timeout=1)
    assert index == 0 and value == a.fileno()
    case = readable(a)
    assert case.fileobj is a and case.fd == a.fileno()
    assert repr(case).startswith("gilfree.readable(<socket.socket")
    r, w = os.pipe()
    try:
        with open(w, "wb", buffering=0, closefd=False) as f:
            assert select(writable(f), timeout=1)[1] is f  # any object with fileno()
        assert select(readable(r), default) == (1, None)
    finally:
        os.close(r)
        os.close(w)


class NoFileno:
    pass


class BadFileno:
    def fileno(self) -> str:
        return "3"


class RaisingFileno:
    def fileno(self) -> int:
        raise OSError("closed")


@pytest.mark.parametrize("bad,exc,match", [(NoFileno(), TypeError, "fileno"), (BadFileno(), TypeError, "int"),
                                           (1.5, TypeError, "fileno"), (True, TypeError, "fileno"),
                                           (-1, ValueError, ">= 0"), (2**70, ValueError, "range"),
                                           (RaisingFileno(), OSError, "closed")])
def test_bad_arguments(bad: Any, exc: type[BaseException], match: str) -> None:
    with pytest.raises(exc, match=match):
        readable(bad)
    with pytest.raises(exc, match=match):
        writable(bad)
    with pytest.raises(exc, match=match):
        wait_readable(bad, timeout=0.01)
    with pytest.raises(TypeError):
        gilfree._netpoll.FdCase()  # type: ignore[misc]


def test_wait_functions(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    assert wait_writable(a, timeout=1) is a
    with pytest.raises(TimeoutError):
        wait_readable(a, timeout=0.05)
    t = threading.Timer(0.05, b.send, (b"x",))
    t.start()
    assert wait_readable(a, timeout=5) is a
    assert wait_readable(a.fileno()) == a.fileno()
    t.join()  # (the sender may still be returning from send(): not before the fixture closes b)


def test_parked_select_woken_by_the_fd_or_by_a_channel(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    ch: Channel[int] = Channel()
    t = threading.Timer(0.05, b.send, (b"x",))
    t.start()
    assert select(ch.recv, readable(a), timeout=5) == (1, a)
    a.recv(10)
    t.join()
    threading.Timer(0.05, ch.send, (7,)).start()
    assert select(ch.recv, readable(a), timeout=5) == (0, 7)
    out: Channel[int] = Channel()
    got = Background(out.recv)
    assert select((out.send, 8), readable(a), timeout=5) == (0, None)
    assert got.join() == 8


def test_a_value_is_never_taken_when_the_fd_wins(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    for _ in range(200):
        ch: Channel[int] = Channel(1)
        b.send(b"x")
        ch.send(1)
        index, _ = select(ch.recv, readable(a))
        if index == 1:
            assert ch.recv_nowait() == 1  # the channel case did not run
        a.recv(10)


def test_ready_cases_are_chosen_uniformly(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    c, d = socket.socketpair()
    try:
        b.send(b"x")
        d.send(b"y")
        ch: Channel[int] = Channel(None)
        counts: Counter[int] = Counter()
        for _ in range(600):
            ch.send(0)
            index, _ = select(readable(a), ch.recv, readable(c), writable(a))
            counts[index] += 1
            if index == 1:
                continue
            ch.recv()
        assert set(counts) == {0, 1, 2, 3}
        assert min(counts.values()) > 80  # 150 expected each
    finally:
        c.close()
        d.close()


def test_none_cases_and_no_channel(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    t = threading.Timer(0.05, b.send, (b"x",))
    t.start()
    assert select(None, readable(a), None, timeout=5) == (1, a)
    t.join()  # (not before the fixture closes b: the sender may still be returning from send())


def test_the_gil_is_released_while_waiting(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    assert_gil_released(lambda: select(readable(a), timeout=0.2))


def test_many_threads_waiting_on_one_fd_are_all_told(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    waiters = [Background(lambda: select(readable(a), timeout=10)) for _ in range(8)]
    time.sleep(0.05)
    b.send(b"x")  # one byte: each waiter is told it is readable (level-triggered, as poll(2))
    for w in waiters:
        assert w.join() == (0, a)


def test_closed_before_select_is_ebadf() -> None:
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    with pytest.raises(OSError) as e:
        select(readable(fd), timeout=1)
    assert e.value.errno == 9


def test_closed_while_waiting_is_ebadf_not_a_hang() -> None:
    r, w = os.pipe()
    threading.Timer(0.1, os.close, (r,)).start()
    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        select(readable(r), timeout=10)
    assert e.value.errno == 9
    assert time.monotonic() - t0 < 5
    os.close(w)
    # also in a thread other than the main one (it is not woken for signals)
    r, w = os.pipe()
    bg = Background(lambda: select(readable(r), timeout=10))
    time.sleep(0.05)
    os.close(r)
    with pytest.raises(OSError):
        bg.join()
    os.close(w)


def test_ten_thousand_sockets() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 10_000 + 500
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the fd limit ({hard}) is below the {need} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    pairs = [socket.socketpair() for _ in range(5_000)]
    socks = [s for pair in pairs for s in pair]  # 10,000 sockets, each a case
    try:
        cases = [readable(s) for s in socks]
        assert select(*cases, default) == (10_000, None)
        socks[7777 ^ 1].send(b"x")  # its peer becomes readable
        assert select(*cases, timeout=5) == (7777, socks[7777])
        socks[7777].recv(10)
        done = Background(lambda: select(*cases, timeout=10))
        time.sleep(0.05)
        socks[123 ^ 1].send(b"y")
        assert done.join() == (123, socks[123])
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_no_descriptor_is_leaked(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    gc.collect()
    before = open_fds()

    def waits() -> None:
        for _ in range(50):
            with pytest.raises(TimeoutError):
                select(readable(a), timeout=0.001)

    threads = [threading.Thread(target=waits) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    waits()  # the main thread keeps its one eventfd for later selects
    wait_until(lambda: open_fds() <= before + 1)
    after_main = open_fds()
    waits()
    assert open_fds() == after_main


def test_ctrl_c_reaches_a_waiting_main_thread() -> None:
    child = textwrap.dedent(
        """
        import socket, time, gilfree
        a, b = socket.socketpair()
        print("ready", flush=True)
        try:
            gilfree.select(gilfree.readable(a))
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
        """
    )
    interrupt_child(child)


@pytest.mark.skipif(SANITIZER == "thread", reason="TSan cannot start threads in a forked child")
def test_fork_child_selects_with_its_own_wakeups(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with pytest.raises(TimeoutError):
        select(readable(a), timeout=0.001)  # the main thread has its eventfd now
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ch: Channel[int] = Channel()
            threading.Timer(0.05, ch.send, (1,)).start()
            code = 0 if select(ch.recv, readable(a), timeout=5) == (0, 1) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_stress_channels_and_sockets_mixed() -> None:
    """Producers write to sockets and send on a channel; consumers select over both: every message arrives
    once."""
    n_pairs, per = 8, 300
    pairs = [socket.socketpair() for _ in range(n_pairs)]
    for a, b in pairs:
        a.setblocking(False)
    ch: Channel[int] = Channel(4)
    got: list[int] = []
    lock = threading.Lock()
    total = n_pairs * per * 2
    stop = Channel[None]()

    def produce(i: int) -> None:
        for k in range(per):
            pairs[i][1].sendall((i * per + k).to_bytes(4, "big"))
            ch.send(100_000 + i * per + k)

    def consume() -> None:
        buf: dict[int, bytes] = {}
        cases = [readable(a) for a, _ in pairs]
        while True:
            index, value = select(ch.recv, stop.recv, *cases)
            if index == 1:
                return
            if index == 0:
                with lock:
                    got.append(value)
                continue
            try:
                data = buf.get(index, b"") + value.recv(4096)
            except BlockingIOError:
                continue  # another consumer read it first
            whole = len(data) - len(data) % 4
            buf[index] = data[whole:]
            with lock:
                got.extend(int.from_bytes(data[j:j + 4], "big") for j in range(0, whole, 4))

    # one consumer per socket side keeps reads whole: split the sockets among consumers by index
    consumers = [threading.Thread(target=consume) for _ in range(1)]
    producers = [threading.Thread(target=produce, args=(i,)) for i in range(n_pairs)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join()
    wait_until(lambda: len(got) >= total, timeout=30)
    stop.close()
    for t in consumers:
        t.join()
    assert sorted(got) == sorted([*range(n_pairs * per), *range(100_000, 100_000 + n_pairs * per)])
    for a, b in pairs:
        a.close()
        b.close()
