"""gilfree.ProcessChannel: a bounded channel between processes, its buffer in shared memory.

The C core (src/procchan.c) keeps a ring of length-prefixed records in a POSIX shared-memory object, guarded
by a robust process-shared mutex; waiters sleep on futex words in that object (a process that dies while it
waits leaves nothing behind, unlike a process-shared condition variable), and encodes values (the small
ones itself, others with pickle). This layer names the object and ties its lifetime to the handles and to
multiprocessing's resource tracker.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Iterable, Iterator, TypeVar

from . import _core
from ._core import ChannelClosed

T = TypeVar("T")

__all__ = ["ProcessChannel"]

_RECORD_OVERHEAD = 8 + 8  # a record's length prefix and its padding, at most
_live: weakref.WeakSet[ProcessChannel[Any]] = weakref.WeakSet()
_live_lock = threading.Lock()
_exit_pid = -1  # the process in which _release_all_at_exit is registered with multiprocessing's finalizers


_BATCH = 64  # values send_many encodes at a time (the C side writes up to as many per lock acquisition)


def _tracker(op: str, name: str) -> None:
    """Register/unregister with multiprocessing's resource tracker, which unlinks what a crashed process
    left (as multiprocessing.shared_memory does). Every process started by multiprocessing shares it."""
    try:
        from multiprocessing import resource_tracker

        getattr(resource_tracker, op)(name, "shared_memory")
    except Exception:  # noqa: BLE001  (no tracker available: the handles' own count still unlinks it)
        pass


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    return value


class ProcessChannel(Generic[T]):
    """A bounded channel between processes: Channel's contract where it makes sense, across processes.

    ``ProcessChannel(capacity=1024, *, buffer_size=1 << 20 | ...)``: at most ``capacity`` messages wait, in a
    shared ring of ``buffer_size`` bytes (the default holds one 1 MiB message with its header); a send
    blocks while either is full (backpressure across processes). None, bools, ints that fit 64 bits,
    floats, str and bytes (these exact types) travel in a compact encoding of gilfree's own; other values
    are pickled (protocol 5). ``send_bytes``/``recv_bytes``/``recv_bytes_into`` move raw bytes as they are.

    - ``send(value, timeout=None)`` / ``recv(timeout=None)`` block with the GIL released; ``TimeoutError``
      when the timeout passes; Ctrl-C reaches a waiting main thread within 100 ms. ``send_nowait`` /
      ``recv_nowait`` raise ``WouldBlock``. ``send_many(iterable)`` / ``recv_many(max_items)`` move a batch
      under one lock acquisition and one wake-up; each value is still a message of its own.
    - A value too large for the buffer raises ValueError, one that cannot be pickled raises its pickling
      error: at the sender, and nothing is sent.
    - ``close()`` is idempotent: senders get ``ChannelClosed``; receivers drain what was sent, then get
      ``ChannelClosed`` (``for v in ch`` ends).
    - It passes to ``multiprocessing.Process(args=...)`` under every start method: it pickles as a handle
      that attaches by name in the child; a forked child also inherits it directly.
    - The shared memory is unlinked when the last handle (in any process) is released (``release()``,
      garbage collection, or the exit of its process), and by multiprocessing's resource tracker if its
      processes crashed.
    - Limits: the channel lives in ``/dev/shm`` and its pages are reserved when it is made, so a full
      ``/dev/shm`` raises ``OSError(ENOSPC)`` there (never SIGBUS later). Any process of the same user can
      open the name: a peer that writes garbage into it gets this handle's operations an ``OSError``
      ("corrupt"), never a crash; a peer can still deny service (hold the lock, eat every message).
    - A process killed at any moment, even holding the channel's lock, never deadlocks the others (robust
      mutex): a message is delivered whole or not at all, never twice. A sender killed mid-send sent
      nothing; a receiver killed after taking a message took it with it.

    >>> ch = gilfree.ProcessChannel(4)
    >>> ch.send({"job": 1}); ch.close()
    >>> list(ch)
    [{'job': 1}]
    >>> ch.release()
    """

    def __init__(self, capacity: int = 1024, *, buffer_size: int = (1 << 20) + 4096) -> None:
        _check_int(capacity, "capacity", 1)
        _check_int(buffer_size, "buffer_size", 64)
        if capacity > 1 << 40:
            raise ValueError(f"capacity must be <= 2**40, not {capacity}")
        if buffer_size > 1 << 40:
            raise ValueError(f"buffer_size must be <= 2**40, not {buffer_size}")
        name = f"/gilfree-{os.getpid()}-{secrets.token_hex(8)}"
        self._h = _core._ProcChan(name, True, capacity, buffer_size)
        _tracker("register", name)
        self._register()

    def _bind(self) -> None:
        # send and recv called straight on the C handle: a Python method around each costs as much as the
        # channel operation itself (the methods below are what these do, and what the docs show)
        self.send = self._h.send_obj  # type: ignore[method-assign]
        self.recv = self._h.recv_obj  # type: ignore[method-assign]

    def _register(self) -> None:
        global _exit_pid
        self._bind()
        self._pid = os.getpid()
        with _live_lock:
            _live.add(self)
            if _exit_pid != self._pid:
                # Processes started by multiprocessing under fork and forkserver end with os._exit, which
                # runs no atexit handler, but they run multiprocessing's finalizers: release there too (a
                # handle attached there holds a reference to the name). A process being started clears
                # those finalizers after it unpickled its arguments (this runs then): its after-fork hooks
                # register it again.
                from multiprocessing import util

                util.Finalize(None, _release_all_at_exit, exitpriority=0)
                util.register_after_fork(self, _after_mp_start)
                _exit_pid = self._pid

    @classmethod
    def _attach(cls, name: str) -> ProcessChannel[Any]:
        self: ProcessChannel[Any] = cls.__new__(cls)
        self._h = _core._ProcChan(name, False)
        self._register()
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # The pickle holds a reference until a process attaches it (the handle made there takes it over):
        # the name stays while it is in flight, even if every handle is released meanwhile.
        self._h.add_ref()
        return (ProcessChannel._attach, (self.name,))

    # ---- state ------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The shared-memory object's name (what a child attaches to)."""
        return str(self._h.name)

    @property
    def capacity(self) -> int:
        return int(self._h.state()["capacity"])

    @property
    def buffer_size(self) -> int:
        return int(self._h.state()["buffer_size"])

    @property
    def closed(self) -> bool:
        return bool(self._h.state()["closed"])

    def __len__(self) -> int:
        return int(self._h.count())

    def __bool__(self) -> bool:
        """Always True, as for Channel: ``len(ch)`` counts the messages waiting."""
        return True

    if not TYPE_CHECKING:  # at run time only: a type checker still reports ch.put as an error

        def __getattr__(self, name: str) -> Any:
            from ._channel import _missing

            raise _missing(self, name)

    def __repr__(self) -> str:
        if self._h.released:
            return f"<gilfree.ProcessChannel {self.name} released>"
        st = self._h.state()
        return (f"<gilfree.ProcessChannel {self.name} {st['count']}/{st['capacity']} messages"
                f"{' closed' if st['closed'] else ''}>")

    # ---- bytes --------------------------------------------------------------------------------------------

    def send_bytes(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        """Send raw bytes (any bytes-like object), without pickling."""
        self._h.send_bytes(data, timeout)

    def recv_bytes(self, timeout: float | None = None) -> bytes:
        """Receive the next message as bytes, without unpickling."""
        return self._h.recv_bytes(timeout)

    def recv_bytes_into(self, buffer: bytearray | memoryview, timeout: float | None = None) -> int:
        """Receive the next message into ``buffer`` (a writable bytes-like object) and return its length.
        ValueError, and nothing taken, if the buffer is too small."""
        return self._h.recv_bytes_into(buffer, timeout)

    # ---- values ------------------------------------------------------------------------------------------

    def send(self, value: T, timeout: float | None = None) -> None:
        self._h.send_obj(value, timeout)

    def send_nowait(self, value: T) -> None:
        self._h.send_obj(value, None, True)

    def recv(self, timeout: float | None = None) -> T:
        return self._h.recv_obj(timeout)  # type: ignore[no-any-return]

    def recv_nowait(self) -> T:
        return self._h.recv_obj(None, True)  # type: ignore[no-any-return]

    def send_many(self, values: Iterable[T], timeout: float | None = None) -> int:
        """Send every value in order; returns the count. Values go in batches: up to 64 are encoded, then as
        many as there is room for are written under one lock acquisition with one wake-up (each is still a
        message of its own, which any receiver may take). ``timeout`` bounds each wait for room. Whatever the
        error (closed, timeout, a value that does not pickle, Ctrl-C), the exception's ``.sent`` says how
        many were delivered."""
        sent = 0
        send_objs = self._h.send_objs
        try:
            if type(values) is tuple or type(values) is list:  # noqa: E721 - exactly these: no iteration
                batch = tuple(values)
                while sent < len(batch):
                    sent += send_objs(batch, sent, timeout)
                return sent
            it = iter(values)
            while True:
                taken: list[T] = []
                failed: BaseException | None = None
                try:
                    taken.extend(itertools.islice(it, _BATCH))
                except BaseException as e:  # the iterable's own error: send what came before it first
                    failed = e
                batch = tuple(taken)
                i = 0
                while i < len(batch):
                    n = send_objs(batch, i, timeout)
                    i += n
                    sent += n
                if failed is not None:
                    raise failed
                if len(batch) < _BATCH:
                    break
        except BaseException as e:
            try:
                e.sent = sent  # type: ignore[attr-defined]
            except AttributeError:  # an exception type that takes no attributes
                pass
            raise
        return sent

    def recv_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        """1 to ``max_items`` values: what is there, waiting only for the first. They are taken under one
        lock acquisition, with one wake-up for the senders.

        A message that cannot be decoded (a pickle that fails to load) raises that error with the values
        taken before it attached as ``.values`` (in order), its bytes as ``.data`` and the values taken after
        it as ``.more`` (any that cannot be decoded either, as its bytes): nothing is lost."""
        _check_int(max_items, "max_items", 1)
        return self._h.recv_objs(max_items, timeout)

    def close(self) -> None:
        """Close the channel for every process (idempotent)."""
        self._h.close()

    def release(self) -> None:
        """Detach this handle; the channel stays open for the handles of other processes. The name is
        removed when the last handle, in any process, is released, counting handles pickled and not yet
        attached (a child started with this channel can attach after the creator let go). Idempotent; done
        too when the handle is collected and when its process exits."""
        self._release(force=False)

    def _release(self, force: bool) -> None:
        """force: remove the name whatever the count (an owner, such as ProcessPool, that knows every user
        is gone, even one killed while it held a reference)."""
        if self._h.released:
            return
        # A forked child's inherited copy holds no reference of its own: it only unmaps.
        mode = (2 if force else 1) if self._pid == os.getpid() else 0
        if self._h.release(mode):
            _tracker("unregister", self.name)

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                yield self.recv()
            except ChannelClosed:
                return

    def __enter__(self) -> ProcessChannel[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        h = getattr(self, "_h", None)
        if h is not None and not h.released:
            try:
                self.release()
            except Exception:  # noqa: BLE001  (at interpreter shutdown)
                pass


def _after_mp_start(_: object) -> None:
    from multiprocessing import util

    util.Finalize(None, _release_all_at_exit, exitpriority=0)


def _release_all_at_exit() -> None:
    with _live_lock:
        live = list(_live)
    for ch in live:
        ch.release()


import atexit  # noqa: E402

atexit.register(_release_all_at_exit)
