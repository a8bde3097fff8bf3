"""Shared helpers for gilfree's tests."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable, Iterator

import pytest

# Stress tests scale their item counts by this (the sanitizer runs use 0.1: they are ~10x slower).
STRESS_SCALE = float(os.environ.get("GILFREE_STRESS_SCALE", "1"))
SANITIZER = os.environ.get("GILFREE_SANITIZER", "")


def scaled(n: int, minimum: int = 100) -> int:
    return max(minimum, int(n * STRESS_SCALE))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nosanitizer: skipped under the sanitizer builds (timing or RSS)")
    import signal

    # A shell starts background jobs (`cmd &`) with SIGINT ignored, and exec'd children inherit that: the
    # Ctrl-C tests' child interpreters would then never see their SIGINT. Handle it here, so that the
    # children start with the default disposition and Python's KeyboardInterrupt handler.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Background:
    """Run fn in a thread; .join() re-raises its exception and returns its result."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self.result = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e
        finally:
            self.done.set()

    def join(self, timeout: float = 10.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


def interrupt_child(child: str, *, within: float = 0.5, settle: float = 0.2, new_session: bool = False
                    ) -> list[str]:
    """Run `child` (Python source) in a subprocess; once it prints "ready", wait `settle` seconds (it
    blocks meanwhile) and send it SIGINT, as Ctrl-C would. The child must then print "interrupted
    <time.monotonic()> ..." and exit 0: asserts it did, within `within` seconds of the signal, and returns
    the line's remaining fields."""
    import signal
    import subprocess
    import sys

    with subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                          start_new_session=new_session) as proc:
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(settle)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            line = proc.stdout.readline().split()
            assert line and line[0] == "interrupted", line
            assert float(line[1]) - t0 < within  # CLOCK_MONOTONIC is system-wide on Linux
            assert proc.wait(30) == 0
            return line[2:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of non-blocking sockets, closed after the test."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def shm_names(prefixes: tuple[str, ...] = ("gilfree-", "psm_")) -> set[str]:
    """The POSIX shared-memory objects in /dev/shm whose names start with one of `prefixes`."""
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefixes)}


@pytest.fixture()
def dev_shm_clean() -> Any:
    """Fails the test if it leaves shared memory of gilfree's (or multiprocessing.shared_memory's) behind
    (objects a crashed process left are cleaned by the resource tracker, so this waits for it a little).
    ProcessChannel names carry their creator's pid: only this process's count, so a test run beside
    another one does not see the other's."""
    mine = (f"gilfree-{os.getpid()}-", "psm_")

    def shm_names() -> set[str]:
        return globals()["shm_names"](mine)

    before = shm_names()
    yield
    import gc

    gc.collect()
    deadline = time.monotonic() + 10
    while shm_names() - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert shm_names() - before == set(), "shared memory left in /dev/shm"


def assert_gil_released(wait: Callable[[], object]) -> None:
    """Call `wait` (a blocking call expected to raise TimeoutError after ~0.2 s) while another thread counts
    in a Python loop: the count proves the waiting thread let it run, i.e. released the GIL."""
    counter = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            counter[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    before = counter[0]
    try:
        with pytest.raises(TimeoutError):
            wait()
    finally:
        stop.set()
        t.join()
    assert counter[0] - before > 10_000


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A private redis-server on a free port, in a temporary directory, with AOF on; its URL. Skips, with
    the reason, where none can run."""
    import shutil
    import socket
    import subprocess

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run does)")
    try:
        import redis
    except ImportError:
        pytest.skip("the redis client is not installed (pip install 'gilfree[redis]')")
    d = tmp_path_factory.mktemp("redis")
    server = RedisServer(exe, d)
    try:
        yield server
    finally:
        server.stop()


class RedisServer:
    """redis-server on a free port (AOF on, fsync always), restartable on the same port and data."""

    def __init__(self, exe: str, directory: Any) -> None:
        import socket

        self.exe, self.dir = exe, directory
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Any = None
        self.start()

    def start(self) -> None:
        import subprocess

        import redis

        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                                      "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                                      "--protected-mode", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=1).ping()
                return
            except redis.ConnectionError:
                assert self.proc.poll() is None, "redis-server exited at start"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.proc = None


@pytest.fixture(params=["sqlite", "redis"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """A fresh store for a gilfree.DurableQueue: an SQLite file, and a private redis-server (flushed for
    each test) where one can run."""
    if request.param == "sqlite":
        return str(tmp_path / "queue.db")
    server = request.getfixturevalue("redis_server")
    import redis

    redis.Redis.from_url(server.url).flushall()
    return server.url
