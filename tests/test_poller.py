"""gilfree.Poller: registrations kept on epoll between waits, a select case next to channels."""

from __future__ import annotations

import gc
import os
import resource
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from typing import Any

import pytest
from conftest import SANITIZER, Background, assert_gil_released, interrupt_child, open_fds, wait_until

import gilfree
from gilfree import READ, WRITE, Channel, Poller, default, select


def test_register_wait_modify_unregister(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with Poller() as p:
        assert (READ, WRITE) == (1, 2)
        p.register(a, READ)
        assert len(p) == 1
        assert p.wait(0.01) == []                    # nothing to read yet
        b.send(b"x")
        assert p.wait(1) == [(a, READ)]              # the object given, and the events that are ready
        assert p.wait(0) == [(a, READ)]              # level-triggered: still ready, still reported
        a.recv(10)
        assert p.wait(0.01) == []
        p.modify(a, READ | WRITE)
        assert p.wait(1) == [(a, WRITE)]             # only the ready subset
        b.send(b"y")
        assert p.wait(1) == [(a, READ | WRITE)]
        p.modify(a, WRITE)
        assert p.wait(1) == [(a, WRITE)]
        p.unregister(a)
        assert len(p) == 0
        assert p.wait(0.01) == []
        p.register(a.fileno(), READ)                 # an int descriptor is reported as that int
        assert p.wait(1) == [(a.fileno(), READ)]
    assert p.closed


def test_only_the_ready_files_are_reported_among_ten_thousand() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 10_000 + 500
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the fd limit ({hard}) is below the {need} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    pairs = [socket.socketpair() for _ in range(5_000)]
    try:
        p = Poller()
        for a, _ in pairs:
            p.register(a, READ)
        assert len(p) == 5_000 and p.wait(0) == []
        pairs[4321][1].send(b"x")
        pairs[17][1].send(b"x")
        assert sorted(p.wait(1), key=lambda r: r[0].fileno()) == [(pairs[17][0], READ), (pairs[4321][0], READ)]
        pairs[17][0].recv(1)
        pairs[4321][0].recv(1)
        done = Background(lambda: p.wait(10))
        time.sleep(0.05)
        pairs[999][1].send(b"y")
        assert done.join() == [(pairs[999][0], READ)]
        p.close()
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_poller_is_a_select_case_beside_channels(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    p = Poller()
    p.register(a, READ)
    ch: Channel[int] = Channel(1)
    assert select(p, ch.recv, default) == (2, None)
    ch.send(5)
    assert select(p, ch.recv, timeout=1) == (1, 5)
    b.send(b"x")
    assert select(p, ch.recv, timeout=1) == (0, [(a, READ)])
    # uniform among ready cases: the poller and a channel with values
    counts: Counter[int] = Counter()
    for _ in range(400):
        ch.send(1)
        index, _ = select(p, ch.recv)
        counts[index] += 1
        if index == 0:
            ch.recv()
    assert counts[0] > 120 and counts[1] > 120, counts
    # a parked select woken by the poller, and by the channel
    a.recv(10)
    later = Background(lambda: select(ch.recv, p, timeout=10))
    time.sleep(0.05)
    b.send(b"z")
    assert later.join() == (1, [(a, READ)])
    a.recv(10)
    later = Background(lambda: select(ch.recv, p, timeout=10))
    time.sleep(0.05)
    ch.send(9)
    assert later.join() == (0, 9)
    with pytest.raises(TimeoutError):
        select(p, timeout=0.01)
    p.close()


def test_a_send_case_is_not_lost_when_another_waiter_takes_the_readiness(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """Two threads wait on one poller; the data is consumed before one of them looks: that one waits again,
    its send case still armed, and sends exactly once."""
    a, b = pair
    p = Poller()
    p.register(a, READ)
    ch: Channel[str] = Channel()
    sender = Background(lambda: select(p, (ch.send, "once"), timeout=10))
    time.sleep(0.05)
    b.send(b"x")
    assert p.wait(1) == [(a, READ)]
    a.recv(1)  # consumed: the sender's select may have seen readiness that is gone when it looks
    try:
        value = select(ch.recv, timeout=2)[1]
    except TimeoutError:
        value = None
    result = sender.join()
    if result[0] == 0:  # it took the readiness before the data was consumed: then nothing was sent
        assert result[1] == [(a, READ)] and value is None
    else:
        assert result == (1, None) and value == "once"
    assert select(ch.recv, default) == (1, None)  # never twice
    p.close()


def test_many_pollers_on_one_socket_are_each_told(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    pollers = [Poller() for _ in range(6)]
    for p in pollers:
        p.register(a, READ)
    waiters = [Background(lambda p=p: p.wait(10)) for p in pollers]
    time.sleep(0.05)
    b.send(b"x")
    assert [w.join() for w in waiters] == [[(a, READ)]] * 6
    for p in pollers:
        p.close()


def test_a_number_reused_after_close_is_never_confused_with_the_old_file() -> None:
    a, a_peer = socket.socketpair()
    p = Poller()
    p.register(a, READ)
    number = a.fileno()
    a.close()  # not unregistered: the kernel drops its registration with the file
    # open sockets until one gets the old number
    spare: list[socket.socket] = []
    while True:
        s, t = socket.socketpair()
        spare += [s, t]
        if number in (s.fileno(), t.fileno()):
            new, new_peer = (s, t) if s.fileno() == number else (t, s)
            break
    new_peer.send(b"ready")  # the new file under the old number is readable
    assert p.wait(0.05) == []  # neither the old socket nor the new, unregistered file
    with pytest.raises(KeyError):
        p.modify(new, READ)    # the number's registration was for another file
    p.register(new, READ)      # no "already registered": the old entry is replaced
    assert p.wait(1) == [(new, READ)]
    p.unregister(new)
    p.register(new, WRITE)
    assert p.wait(1) == [(new, WRITE)]
    with pytest.raises(KeyError, match="already registered"):
        p.register(new.fileno(), READ)  # the same file under another name
    p.close()
    for s in spare + [a_peer]:
        s.close()


def test_a_closed_file_kept_open_by_a_duplicate_does_not_make_waits_spin() -> None:
    """Closing a registered socket while a duplicate of it lives (a dup, a forked child's copy) leaves its
    kernel registration behind, out of epoll_ctl's reach. Its reports are dropped, and the first wake-up that
    finds nothing else rebuilds the epoll instance without it: later waits sleep, and the live registrations
    still report."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    p = Poller()
    p.register(a, READ)
    p.register(c, READ)
    twin = a.dup()
    a.close()            # not unregistered first; the twin keeps the file open
    p.unregister(a)      # found by the object; the kernel's registration cannot be reached
    b.send(b"x")         # the file (held by twin) is readable: its stale registration fires
    assert p.wait(0.05) == []
    cpu0 = time.thread_time()
    assert p.wait(0.3) == []
    with pytest.raises(TimeoutError):
        select(p, timeout=0.3)
    assert time.thread_time() - cpu0 < 0.2  # slept, not spun (a spin would burn ~0.6 s of CPU)
    d.send(b"y")
    assert p.wait(1) == [(c, READ)]    # the live registration survived the rebuild
    assert select(p, timeout=1) == (0, [(c, READ)])
    c.recv(1)
    # again, met first by a non-blocking select: it returns its default, not a spin or an empty list
    e, f = socket.socketpair()
    p.register(e, READ)
    twin2 = e.dup()
    e.close()
    p.unregister(e)
    f.send(b"z")
    assert select(p, default) == (1, None)
    assert select(p, default) == (1, None)
    p.close()
    for s in (twin, b, c, d, twin2, f):
        s.close()


def test_unregister_a_closed_socket_and_errors(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    c, d = socket.socketpair()
    p = Poller()
    p.register(c, READ)
    c.close()
    p.unregister(c)  # fileno() is -1 now: found by the object
    assert len(p) == 0
    with pytest.raises(KeyError, match="not registered"):
        p.unregister(c)
    with pytest.raises(KeyError, match="not registered"):
        p.unregister(a)
    with pytest.raises(KeyError, match="not registered"):
        p.modify(a, READ)
    with pytest.raises(OSError) as e:
        p.register(10**6 - 1, READ)
    assert e.value.errno == 9  # EBADF: not an open descriptor
    d.close()
    p.close()


@pytest.mark.parametrize("call, exc, match", [
    (lambda p, a: p.register(a, 0), ValueError, "events must be"),
    (lambda p, a: p.register(a, 4), ValueError, "events must be"),
    (lambda p, a: p.register(a, True), TypeError, "events must be an int"),
    (lambda p, a: p.register(a, "r"), TypeError, "events must be an int"),
    (lambda p, a: p.register("x"), TypeError, "f must be an int file descriptor"),
    (lambda p, a: p.register(-1), ValueError, "f: file descriptor must be >= 0"),
    (lambda p, a: p.register(), TypeError, "register"),
    (lambda p, a: p.wait(-1), ValueError, "timeout"),
    (lambda p, a: p.wait("soon"), TypeError, "timeout"),
    (lambda p, a: Poller(1), TypeError, "takes no arguments"),
])
def test_bad_arguments(pair: tuple[socket.socket, socket.socket], call: Any, exc: type[BaseException],
                       match: str) -> None:
    p = Poller()
    with pytest.raises(exc, match=match):
        call(p, pair[0])
    p.close()


def test_regular_files_are_always_ready(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    with tempfile.TemporaryFile() as f, Poller() as p:
        p.register(a, READ)
        p.register(f, READ | WRITE)  # epoll refuses regular files: poll(2) calls them always ready
        assert p.wait(1) == [(f, READ | WRITE)]
        assert p.wait(1) == [(f, READ | WRITE)]
        assert select(p, timeout=1) == (0, [(f, READ | WRITE)])
        p.modify(f, READ)
        assert p.wait(1) == [(f, READ)]
        p.unregister(f)
        assert p.wait(0.01) == []


def test_wake_returns_a_wait_and_a_select() -> None:
    p = Poller()
    t0 = time.monotonic()
    threading.Timer(0.05, p.wake).start()
    assert p.wait(10) == []
    assert time.monotonic() - t0 < 5
    threading.Timer(0.05, p.wake).start()
    assert select(p, timeout=10) == (0, [])
    p.wake()  # before the wait: the next one returns at once
    assert p.wait(10) == []
    p.close()


def test_close_with_waits_in_progress_releases_every_descriptor(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    gc.collect()
    before = open_fds()
    p = Poller()
    p.register(a, READ)
    waits = [Background(lambda: p.wait(10)), Background(lambda: select(p, timeout=10))]
    time.sleep(0.05)
    p.close()
    for w in waits:
        with pytest.raises(ValueError, match="closed Poller"):
            w.join()
    assert p.closed and len(p) == 0
    wait_until(lambda: open_fds() <= before + 1)  # (+1: a thread's eventfd may still be closing)
    for call in (lambda: p.wait(0), lambda: p.register(a), lambda: select(p, timeout=0), p.fileno, p.wake):
        with pytest.raises(ValueError, match="closed Poller"):
            call()
    p.close()  # idempotent


def test_nothing_leaks_from_interrupted_waits_and_collected_pollers(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    gc.collect()
    before = open_fds()
    for _ in range(50):
        p = Poller()
        p.register(a, READ)
        p.register(b, WRITE)
        assert p.wait(1) == [(b, WRITE)]
        p.unregister(b)
        with pytest.raises(TimeoutError):
            select(p, timeout=0.001)
        assert p.wait(0.001) == []
        holder: list[Any] = [p]
        holder.append(holder)  # a cycle through the poller's own registrations is collected
        p.register(b.fileno(), READ)
        del p, holder
    gc.collect()
    assert open_fds() == before


def test_the_gil_is_released_while_waiting(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    p = Poller()
    p.register(a, READ)

    def wait() -> None:
        assert p.wait(0.2) == []
        raise TimeoutError

    assert_gil_released(wait)
    p.close()


def test_ctrl_c_reaches_a_main_thread_in_wait_and_in_select() -> None:
    for call in ("p.wait()", "gilfree.select(p)"):
        child = textwrap.dedent(
            f"""
            import socket, time, gilfree
            a, b = socket.socketpair()
            p = gilfree.Poller()
            p.register(a)
            print("ready", flush=True)
            try:
                {call}
            except KeyboardInterrupt:
                print("interrupted", time.monotonic(), flush=True)
            """
        )
        interrupt_child(child, within=0.3)


@pytest.mark.skipif(SANITIZER == "thread", reason="TSan cannot follow a forked child")
def test_a_forked_child_cannot_use_the_parents_poller(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    p = Poller()
    p.register(a, READ)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                p.wait(0)
            except RuntimeError as e:
                code = 0 if "forked child" in str(e) else 2
            q = Poller()  # its own works
            q.register(a, WRITE)
            if q.wait(1) != [(a, WRITE)]:
                code = 3
            p.close()  # closes the child's copies only
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    b.send(b"x")
    assert p.wait(1) == [(a, READ)]  # the parent's registrations are intact
    p.close()


def test_stress_threads_registering_waiting_and_unregistering() -> None:
    """Writers make sockets readable, readers wait on shared pollers and drain what is ready, others register
    and unregister sockets meanwhile: every byte is read exactly once and nothing crashes or hangs."""
    n_pairs, per = 16, 200
    pairs = [socket.socketpair() for _ in range(n_pairs)]
    for a, b in pairs:
        a.setblocking(False)
    pollers = [Poller(), Poller()]
    for i, (a, _) in enumerate(pairs):
        pollers[i % 2].register(a, READ)
    got: Counter[int] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    readers_of = {a for a, _ in pairs}

    def reader(p: Poller) -> None:
        while not stop.is_set():
            for s, events in p.wait(0.05):
                if s not in readers_of:
                    assert events & WRITE  # a churn socket (the churn thread may close it right after)
                    continue
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue  # another reader of this poller drained it first
                with lock:
                    got[s.fileno()] += len(data)

    def writer(k: int) -> None:
        for _ in range(per):
            pairs[k][1].send(b"x")
            time.sleep(0)

    def churn() -> None:
        c, d = socket.socketpair()
        for i in range(300):
            p = pollers[i % 2]
            p.register(c, READ | WRITE)
            p.wait(0)
            p.modify(c, READ)
            p.unregister(c)
        c.close()
        d.close()

    readers = [threading.Thread(target=reader, args=(pollers[i % 2],)) for i in range(4)]
    others = [threading.Thread(target=writer, args=(k,)) for k in range(n_pairs)]
    others += [threading.Thread(target=churn) for _ in range(2)]
    for t in readers + others:
        t.start()
    for t in others:
        t.join()
    wait_until(lambda: sum(got.values()) == n_pairs * per, timeout=30)
    stop.set()
    for t in readers:
        t.join()
    assert got == Counter({a.fileno(): per for a, _ in pairs})
    for p in pollers:
        p.close()
    for a, b in pairs:
        a.close()
        b.close()


def test_exported() -> None:
    assert gilfree.Poller is Poller and gilfree.READ == 1 and gilfree.WRITE == 2


def test_the_echo_server_runs_one_loop_per_worker_on_a_shared_port() -> None:
    from gilfree.bench.echo import EchoServer

    with pytest.raises(ValueError, match="workers"):
        EchoServer(workers=0)
    with pytest.raises(TypeError, match="workers"):
        EchoServer(workers="2")  # type: ignore[arg-type]
    srv = EchoServer(workers=2)
    socks = [socket.create_connection(srv.address) for _ in range(40)]
    for i, s in enumerate(socks):
        s.sendall(b"%d;" % i)
    for i, s in enumerate(socks):
        want, got = b"%d;" % i, b""
        while len(got) < len(want):
            got += s.recv(100)
        assert got == want
    # the kernel spread the connections over both loops' listeners (SO_REUSEPORT hashes by address)
    per_loop = [len(p) - 1 for p in srv._pollers]
    assert sum(per_loop) == 40 and min(per_loop) > 0, per_loop
    srv.close()
    for s in socks:
        s.settimeout(5)
        assert s.recv(10) == b""  # closed by the server
        s.close()


def test_the_echo_server_survives_running_out_of_descriptors() -> None:
    child = textwrap.dedent(
        """
        import resource, socket, time
        from gilfree.bench.echo import EchoServer
        srv = EchoServer(workers=1)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        import os
        in_use = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 40, hard))
        # each connection costs this process two descriptors (client and server side): past the limit the
        # server cannot accept; it must not spin or die, and serve again once descriptors are free
        clients = []
        for _ in range(30):
            try:
                clients.append(socket.create_connection(srv.address, timeout=5))
            except OSError:
                break
        time.sleep(0.5)
        for c in clients[5:]:
            c.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        c = socket.create_connection(srv.address, timeout=5)
        c.sendall(b"after")
        assert c.recv(10) == b"after"
        for s in clients[:5]:
            s.sendall(b"early")
            assert s.recv(10) == b"early"
        print("served", len(clients), flush=True)
        srv.close()
        """
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("served")


def test_the_wakeup_benchmark_runs(tmp_path: Any) -> None:
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_poller.py")
    out = subprocess.run([sys.executable, script, "--sizes", "10,50", "--repeat", "1", "--json",
                          str(tmp_path / "p.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert [r["n"] for r in rows] == [10, 50]
    assert all(r[k]["median_us"] > 0 for r in rows for k in ("poller", "selectors", "epoll", "select"))
