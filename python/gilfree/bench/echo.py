"""The io_sockets scenario: a TCP echo workload on loopback against several servers.

``EchoServer`` is gilfree's server in the Go style: an accept loop hands each new connection to one of a
small, fixed set of worker threads through that worker's control channel, and each worker waits in one
gilfree.select over its control channel and its connections' sockets (a new connection, data to echo, room
to write what is still owed, or shutdown). No thread per connection, no event loop: a worker blocks, the GIL
released, until one of its cases is ready. ``examples/echo_server.py`` runs it.

The other servers, for comparison: asyncio streams (the default loop, and uvloop where it installs) and
socketserver.ThreadingTCPServer (a thread per connection). Each runs in a process of its own
(``python -m gilfree.bench.echo --serve KIND``), so its CPU time and peak RSS are its own; the client keeps N
connections busy in a closed loop (send a small message, wait for the whole echo, send the next).
"""

from __future__ import annotations

import importlib.util
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from .._channel import Channel
from .._core import CLOSED, select as gselect
from .._netpoll import readable, writable
from .measure import peak_kib, proc_cpu

SERVERS = ["gilfree", "asyncio", "uvloop", "threading"]
MESSAGE = b"x" * 31 + b"\n"  # small messages


class _Conn:
    __slots__ = ("sock", "owed", "read_case", "write_case")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.owed = b""  # echoed bytes the socket had no room for yet
        self.read_case = readable(sock)
        self.write_case = writable(sock)


class EchoServer:
    """Echoes every byte back. ``workers`` threads share the connections; ``address`` is (host, port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, workers: int = 4, backlog: int = 4096) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.listener = socket.create_server((host, port), backlog=backlog)
        self.listener.setblocking(False)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._stop: Channel[None] = Channel()  # closed to stop the accept loop
        self._controls: list[Channel[socket.socket]] = [Channel(256) for _ in range(workers)]
        self._threads = [threading.Thread(target=self._accept_loop, name="echo-accept", daemon=True)]
        self._threads += [threading.Thread(target=self._worker, args=(c,), name=f"echo-worker{i}", daemon=True)
                          for i, c in enumerate(self._controls)]
        for t in self._threads:
            t.start()

    def _accept_loop(self) -> None:
        n = 0
        try:
            while True:
                index, _ = gselect(self._stop.recv, readable(self.listener))
                if index == 0:
                    return
                while True:  # accept every connection that is waiting
                    try:
                        conn, _ = self.listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._controls[n % len(self._controls)].send(conn)  # blocks if that worker is behind
                    n += 1
        finally:
            for c in self._controls:
                c.close()  # each worker closes its connections and ends
            self.listener.close()

    def _worker(self, control: Channel[socket.socket]) -> None:
        conns: list[_Conn] = []
        cases: list[Any] = [control.recv]
        owners: list[_Conn | None] = [None]  # the connection behind each case

        def rebuild() -> None:
            cases[1:] = [c.write_case if c.owed else c.read_case for c in conns]
            owners[1:] = conns

        def drop(c: _Conn) -> None:
            conns.remove(c)
            c.sock.close()
            rebuild()

        while True:
            index, value = gselect(*cases)
            if index == 0:
                if value is CLOSED:  # shutdown
                    for c in conns:
                        c.sock.close()
                    return
                conns.append(_Conn(value))
                rebuild()
                continue
            owner = owners[index]
            assert owner is not None
            c = owner
            try:
                if c.owed:  # writable: send what is still owed
                    sent = c.sock.send(c.owed)
                    c.owed = c.owed[sent:]
                    if not c.owed:
                        rebuild()
                    continue
                data = c.sock.recv(65536)
                if not data:  # the client closed
                    drop(c)
                    continue
                sent = c.sock.send(data)
                if sent < len(data):
                    c.owed = data[sent:]
                    rebuild()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # reset by the peer
                drop(c)

    def close(self) -> None:
        """Stop accepting, close every connection, and wait for the threads to end."""
        self._stop.close()
        for t in self._threads:
            t.join()

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- servers (run with --serve KIND: print the port, serve until stdin closes) ----------------------------


def serve(kind: str, workers: int) -> None:
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


def load(port: int, connections: int, duration: float, warmup: float, max_requests: int, pid: int
         ) -> dict[str, float]:
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
    for s in socks:
        s.close()
    ep.close()
    lat.sort()
    return {"rps": done / elapsed, "p50_ms": lat[len(lat) // 2] * 1e3 if lat else 0.0,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else 0.0,
            "cpu_us_per_req": cpu / max(1, done) * 1e6, "requests": done}


def available(kind: str) -> bool:
    return kind != "uvloop" or importlib.util.find_spec("uvloop") is not None


def run_one(kind: str, connections: int, duration: float, warmup: float, max_requests: int, workers: int
            ) -> dict[str, float]:
    """Start server `kind` in a process of its own, load it, stop it: requests/s, p50/p99 ms, the server's
    CPU time per request and its peak RSS."""
    proc = subprocess.Popen([sys.executable, "-m", "gilfree.bench.echo", "--serve", kind, "--workers",
                             str(workers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        r = load(port, connections, duration, warmup, max_requests, proc.pid)
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
        serve(sys.argv[2], int(sys.argv[4]))
    else:
        raise SystemExit("usage: python -m gilfree.bench.echo --serve KIND --workers N")
