"""A TCP echo server on gilfree.Poller: one event loop per core.

Each of ``--workers`` event-loop threads has a listening socket of its own on the shared port (SO_REUSEPORT:
the kernel spreads new connections over them) and one gilfree.Poller holding its listener and its
connections, registered once: a wait costs what is ready, not what is open. A loop waits with the GIL
released; on a free-threaded build the loops run at once.

    python examples/echo_server.py                 # serves on 127.0.0.1:<port> until Ctrl-C
    python examples/echo_server.py --selftest      # starts it, echoes over 50 connections, stops (the test)

From Python: ``with EchoServer() as srv: ... srv.address ...``. The server's code is in
gilfree.bench.echo (python/gilfree/bench/echo.py), where the main job's io_sockets scenario runs it too.
"""

from __future__ import annotations

import argparse
import socket
import threading

from gilfree.bench.echo import EchoServer  # the server itself: python/gilfree/bench/echo.py


def _selftest(connections: int = 50, rounds: int = 20) -> None:
    with EchoServer(workers=2) as srv:
        socks = [socket.create_connection(srv.address) for _ in range(connections)]
        for r in range(rounds):
            for i, s in enumerate(socks):
                s.sendall(f"{i}:{r};".encode())
            for i, s in enumerate(socks):
                want = f"{i}:{r};".encode()
                got = b""
                while len(got) < len(want):
                    got += s.recv(100)
                assert got == want, (got, want)
        for s in socks:
            s.close()
    print(f"echoed {connections * rounds} messages over {connections} connections")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None,
                    help="event-loop threads (default: one per CPU on a free-threaded build, else one)")
    ap.add_argument("--selftest", action="store_true")
    args = ap.parse_args()
    if args.selftest:
        _selftest()
        return
    with EchoServer(port=args.port, workers=args.workers) as srv:
        print(f"echo server on {srv.address[0]}:{srv.address[1]} ({args.workers} workers); Ctrl-C stops it")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
