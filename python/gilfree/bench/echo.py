"""The io_sockets scenario: a TCP echo workload on loopback against several servers.

``EchoServer`` is gilfree's event-driven server: one event-loop thread per core (``workers``), each with a
listening socket of its own on the shared port (``SO_REUSEPORT``: the kernel spreads new connections over
them) and one ``gilfree.Poller`` that holds its listener and its connections, registered once. A loop waits
in ``Poller.wait()`` (the GIL released) and gets back only the sockets that are ready: accept, echo what
arrived, or send what is still owed. On a free-threaded build the loops run at once, one per core.
``examples/echo_server.py`` runs it.

The other servers, for comparison: asyncio streams (the default loop, and uvloop where it installs) and
socketserver.ThreadingTCPServer (a thread per connection). Each runs in a process of its own
(``python -m gilfree.bench.echo --serve KIND``), so its CPU time and peak RSS are its own; the client keeps N
connections busy in a closed loop (send a small message, wait for the whole echo, send the next).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from .._netpoll import READ, WRITE, Poller
from .._parallel import gil_enabled
from .measure import peak_kib, proc_cpu

SERVERS = ["gilfree", "asyncio", "uvloop", "threading"]
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
MESSAGE = b"x" * 31 + b"\n"  # small messages


class EchoServer:
    """Echoes every byte back. ``workers`` event-loop threads (default: one per CPU where threads run at once,
    a free-threaded build; one with the GIL, where more would only queue for it); ``address`` is (host, port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, workers: int | None = None,
                 backlog: int = 4096) -> None:
        if workers is None:
            workers = 1 if gil_enabled() else len(os.sched_getaffinity(0))
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError(f"workers must be an int, not {type(workers).__name__}")
        if workers < 1:
            raise ValueError("workers must be >= 1")
        reuse = hasattr(socket, "SO_REUSEPORT")
        first = socket.create_server((host, port), backlog=backlog, reuse_port=reuse)
        self.address: tuple[str, int] = first.getsockname()[:2]
        # Each loop accepts on a listener of its own (one socket shared by every loop where SO_REUSEPORT is
        # missing: each is told, one accepts).
        self._listeners = [first] + [socket.create_server(self.address, backlog=backlog, reuse_port=True)
                                     if reuse else first for _ in range(workers - 1)]
        for sock in self._listeners:
            sock.setblocking(False)
        self._pollers = [Poller() for _ in range(workers)]
        self._stopping = False
        self._threads = [threading.Thread(target=self._loop, args=(p, sock), name=f"echo-loop{i}", daemon=True)
                         for i, (p, sock) in enumerate(zip(self._pollers, self._listeners))]
        for t in self._threads:
            t.start()

    def _loop(self, poller: Poller, listener: socket.socket) -> None:
        poller.register(listener, READ)
        owed: dict[socket.socket, bytes] = {}  # echoed bytes a socket had no room for yet
        conns: set[socket.socket] = set()
        wait, register, modify = poller.wait, poller.register, poller.modify

        def drop(sock: socket.socket) -> None:
            poller.unregister(sock)  # before close: a registration outlives a closed file that was duplicated
            conns.discard(sock)
            owed.pop(sock, None)
            sock.close()

        paused_until = 0.0  # out of descriptors: accept again from then on (as asyncio does)
        try:
            while not self._stopping:
                if paused_until and time.monotonic() >= paused_until:
                    register(listener, READ)
                    paused_until = 0.0
                for sock, events in wait(0.1 if paused_until else None):
                    if sock is listener:
                        while True:  # every connection that is waiting
                            try:
                                conn, _ = listener.accept()
                            except (BlockingIOError, InterruptedError):
                                break
                            except OSError as e:
                                if e.errno not in _OUT_OF_RESOURCES:
                                    raise
                                # The connection waits in the backlog; the listener would stay ready and
                                # this loop spin: stop watching it for a while.
                                poller.unregister(listener)
                                paused_until = time.monotonic() + 0.1
                                break
                            conn.setblocking(False)
                            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            register(conn, READ)
                            conns.add(conn)
                        continue
                    try:
                        if events & WRITE:  # room for what is owed
                            data = owed.pop(sock)
                            sent = sock.send(data)
                            if sent < len(data):
                                owed[sock] = data[sent:]
                            else:
                                modify(sock, READ)
                            continue
                        data = sock.recv(65536)
                        if not data:  # the client closed
                            drop(sock)
                            continue
                        sent = sock.send(data)
                        if sent < len(data):
                            owed[sock] = data[sent:]
                            modify(sock, WRITE)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:  # reset by the peer
                        drop(sock)
        finally:
            poller.close()
            for sock in conns:
                sock.close()
            listener.close()

    def close(self) -> None:
        """Stop accepting, close every connection, and wait for the threads to end."""
        self._stopping = True
        for p in self._pollers:
            try:
                p.wake()
            except ValueError:
                pass  # its loop ended already
        for t in self._threads:
            t.join()

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- servers (run with --serve KIND: print the port, serve until stdin closes) ----------------------------


def serve(kind: str, workers: int | None) -> None:
    def watch_stdin() -> None:
        sys.stdin.read()

    if kind == "gilfree":
        srv = EchoServer(workers=workers)
        print(srv.address[1], flush=True)
        watch_stdin()
        srv.close()
    elif kind in ("asyncio", "uvloop"):
        import asyncio

        if kind == "uvloop":
            uvloop: Any = importlib.import_module("uvloop")  # optional: the bench extra installs it
            uvloop.install()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        async def main() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
            print(server.sockets[0].getsockname()[1], flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            server.close()

        asyncio.run(main())
    elif kind == "threading":
        import socketserver

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    while data := self.request.recv(65536):
                        self.request.sendall(data)
                except ConnectionError:
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 4096

        with Server(("127.0.0.1", 0), Handler) as tsrv:
            print(tsrv.server_address[1], flush=True)
            t = threading.Thread(target=tsrv.serve_forever, daemon=True)
            t.start()
            watch_stdin()
            tsrv.shutdown()
    else:
        raise SystemExit(f"unknown server {kind}")


# ---- the client ------------------------------------------------------------------------------------------


def load(port: int, connections: int, duration: float, warmup: float, max_requests: int, pid: int,
         idle: int = 0) -> dict[str, float]:
    """``connections`` busy in a closed loop; ``idle`` more opened first and left open, silent, meanwhile."""
    quiet = [socket.create_connection(("127.0.0.1", port)) for _ in range(idle)]
    socks = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    ep = select.epoll()
    by_fd = {s.fileno(): s for s in socks}
    got = dict.fromkeys(by_fd, 0)
    sent_at = {}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    n = len(MESSAGE)
    lat: list[float] = []
    now = time.perf_counter()
    for fd, s in by_fd.items():
        s.send(MESSAGE)
        sent_at[fd] = now
    t_start = now + warmup
    t_end = t_start + duration
    cpu0 = None
    done = 0
    while True:
        now = time.perf_counter()
        if cpu0 is None and now >= t_start:
            cpu0 = proc_cpu(pid)
            done = 0
            lat.clear()
            measured_from = now
        if now >= t_end or (cpu0 is not None and done >= max_requests):
            break
        for fd, _ in ep.poll(0.05):
            s = by_fd[fd]
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                raise RuntimeError("the server closed a connection")
            got[fd] += len(data)
            if got[fd] >= n:
                got[fd] -= n
                t = time.perf_counter()
                lat.append(t - sent_at[fd])
                done += 1
                sent_at[fd] = t
                s.send(MESSAGE)
    elapsed = time.perf_counter() - measured_from
    cpu = proc_cpu(pid) - (cpu0 or 0.0)
    for s in socks + quiet:
        s.close()
    ep.close()
    lat.sort()
    return {"rps": done / elapsed, "p50_ms": lat[len(lat) // 2] * 1e3 if lat else 0.0,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else 0.0,
            "cpu_us_per_req": cpu / max(1, done) * 1e6, "requests": done}


def available(kind: str) -> bool:
    return kind != "uvloop" or importlib.util.find_spec("uvloop") is not None


def run_one(kind: str, connections: int, duration: float, warmup: float, max_requests: int,
            workers: int | None,
            idle: int = 0) -> dict[str, float]:
    """Start server `kind` in a process of its own, load it, stop it: requests/s, p50/p99 ms, the server's
    CPU time per request and its peak RSS."""
    proc = subprocess.Popen([sys.executable, "-m", "gilfree.bench.echo", "--serve", kind, "--workers",
                             str(workers or 0)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        r = load(port, connections, duration, warmup, max_requests, proc.pid, idle)
        r["rss_mib"] = peak_kib(proc.pid) / 1024
        proc.stdin.close()
        proc.wait(30)
        return r
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve" and sys.argv[3] == "--workers":
        serve(sys.argv[2], int(sys.argv[4]) or None)
    else:
        raise SystemExit("usage: python -m gilfree.bench.echo --serve KIND --workers N  (0: the default)")
