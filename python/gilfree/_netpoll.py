"""File descriptors and sockets as select cases (the C side: src/netpoll.c).

``gilfree.readable(f)`` / ``gilfree.writable(f)`` are select cases next to channel cases; ``wait_readable``
and ``wait_writable`` wait for one descriptor alone. ``gilfree.Poller`` (src/poller.c) keeps many registered
between waits, on epoll, and is a select case too.
"""

from __future__ import annotations

from typing import TypeVar

from ._core import READ, WRITE, FdCase, Poller, readable, select, writable

__all__ = ["READ", "WRITE", "FdCase", "Poller", "readable", "wait_readable", "wait_writable", "writable"]

F = TypeVar("F")


def wait_readable(f: F, timeout: float | None = None) -> F:
    """Wait until ``f`` (an int file descriptor, or an object with ``fileno()``) can be read without
    blocking, and return ``f``. The GIL is released while waiting; Ctrl-C reaches the main thread within
    100 ms.

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
        OSError: ``f`` is not an open descriptor (EBADF), also when it is closed while waiting.
        TypeError, ValueError: ``f`` is neither an int >= 0 nor has ``fileno()``.

    >>> import socket
    >>> a, b = socket.socketpair()
    >>> _ = b.send(b"ping")
    >>> gilfree.wait_readable(a, timeout=1) is a
    True
    >>> a.recv(4)
    b'ping'
    """
    select(readable(f), timeout=timeout)  # type: ignore[arg-type]
    return f


def wait_writable(f: F, timeout: float | None = None) -> F:
    """Wait until ``f`` can be written without blocking, and return ``f``; as :func:`wait_readable`.

    >>> import socket
    >>> a, b = socket.socketpair()
    >>> gilfree.wait_writable(a, timeout=1) is a
    True
    """
    select(writable(f), timeout=timeout)  # type: ignore[arg-type]
    return f
