"""gilfree.queue: a durable producer-consumer queue that keeps its messages when processes die.

``DurableQueue(url)`` stores messages in SQLite (a file path or ``sqlite:///path``: embedded, no server)
or in Redis Streams (``redis://host:port/db``). Producers ``put``; consumers in named groups take
messages under a lease and ``ack`` them when handled. A message whose lease runs out without an ack (its
consumer crashed, hung or was killed) goes to another consumer; one that fails ``max_attempts`` times goes
to the group's dead letters. Every group sees every message, as every Kafka consumer group sees a
topic; within a group each message goes to one consumer at a time. Delivery is at least once: make
handlers idempotent.

    q = DurableQueue("jobs.db")
    q.put({"page": 17})
    with q.consumer("indexer") as c:
        for msg in c:
            with msg:                 # ack on success, nack (retry after the backoff) on exception
                index(msg.value)
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import json
import math
import os
import pickle
import re
import socket
import threading
import time
import weakref
from typing import Any, Callable, Generic, Iterable, Iterator, NamedTuple, Sequence, TypeVar

from .._channel import Channel
from .._core import ChannelClosed
from ._common import LeaseLost, Taken

__all__ = ["DeadLetter", "DeadLetters", "DurableQueue", "Consumer", "LeaseLost", "Message", "acking"]

T = TypeVar("T")
U = TypeVar("U")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
POLL_MAX = 0.05  # an idle consumer looks for messages put by other processes at least this often


class _Serializer:
    def __init__(self, spec: Any) -> None:
        if spec == "pickle":
            self.dumps: Callable[[Any], bytes] = lambda v: pickle.dumps(v, pickle.HIGHEST_PROTOCOL)
            self.loads: Callable[[bytes], Any] = pickle.loads
        elif spec == "json":
            self.dumps = lambda v: json.dumps(v, separators=(",", ":")).encode()
            self.loads = lambda b: json.loads(b)
        elif spec == "bytes":
            def dumps(v: Any) -> bytes:
                if not isinstance(v, (bytes, bytearray, memoryview)):
                    raise TypeError(f"value must be bytes with serializer='bytes', not {type(v).__name__}")
                return bytes(v)
            self.dumps, self.loads = dumps, bytes
        elif callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None)):
            self.dumps, self.loads = spec.dumps, spec.loads
        else:
            raise ValueError(f"serializer must be 'pickle', 'json', 'bytes' or an object with dumps and loads, "
                             f"not {spec!r}")
        self.spec = spec


def _number(value: Any, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'above' if positive else 'at least'} 0, got {value!r}")
    return float(value)


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not _NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r}: use 1 to 128 letters, digits and '_', '.', ':', '-', starting with a "
                         f"letter or digit")
    return value


def _open(url: Any, name: str, sync: str) -> Any:
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str):
        raise TypeError(f"url must be a path or a URL string, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        path = url
    elif scheme == "sqlite":
        if not rest.startswith("/"):
            raise ValueError(f"url {url!r}: write sqlite:///relative/path or sqlite:////absolute/path")
        path = rest[1:]
    elif scheme in ("redis", "rediss"):
        from ._redis import RedisBackend

        return RedisBackend(url, name)
    else:
        raise ValueError(f"url {url!r}: unknown scheme {scheme!r}; use a file path, sqlite:///path or "
                         f"redis://host:port/db")
    if not path or path == ":memory:":
        raise ValueError(f"url {url!r}: name a file (a queue in memory would not survive its process)")
    if os.path.isdir(path):
        raise ValueError(f"url {url!r}: is a directory; name a file in it")
    from ._sqlite import SQLiteBackend

    return SQLiteBackend(path, name, sync)


# In-process wake-ups: a put wakes the consumers of the same queue in this process at once (other
# processes' consumers find it within POLL_MAX).
_wakers: dict[tuple[str, str, str], threading.Condition] = {}
_wakers_lock = threading.Lock()


def _waker(key: tuple[str, str, str]) -> threading.Condition:
    with _wakers_lock:
        cond = _wakers.get(key)
        if cond is None:
            cond = _wakers[key] = threading.Condition(threading.Lock())
        return cond


def _after_fork_in_child() -> None:
    """A parent's thread may have held a waker's lock at the fork: the child starts with fresh ones."""
    global _wakers_lock
    _wakers.clear()
    _wakers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class DurableQueue:
    """A durable queue of messages, shared by producers and consumer groups in any number of processes.

    Args:
        url: a file path or ``sqlite:///path`` (SQLite in WAL mode, embedded), or ``redis://host:port/db``
            (Redis Streams with consumer groups; needs ``pip install 'gilfree[redis]'``).
        name: the queue's name in that store (several queues can share one).
        lease: seconds a consumer holds a message before it is offered to another consumer.
        max_attempts: deliveries before a message goes to the dead letters.
        backoff: ``(base, factor, cap)``: a nacked message waits ``base * factor**(attempt-1)`` seconds, at
            most ``cap``, before its next delivery.
        serializer: ``"pickle"`` (default), ``"json"``, ``"bytes"``, or an object with ``dumps``/``loads``.
        sync: SQLite only: ``"normal"`` (default: a put survives the crash of any process; an OS crash or
            power cut may lose the last puts before a checkpoint) or ``"full"`` (survives those too, at an
            fsync per commit).

    Raises:
        TypeError, ValueError: naming the argument (a corrupt SQLite file, an unknown URL scheme, a
            negative lease, a name with odd characters).
    """

    __module__ = "gilfree"

    def __init__(self, url: str | os.PathLike[str], name: str = "default", *, lease: float = 30.0,
                 max_attempts: int = 5, backoff: tuple[float, float, float] = (1.0, 2.0, 300.0),
                 serializer: Any = "pickle", sync: str = "normal") -> None:
        self.name = _check_name(name, "name")
        self.lease = _number(lease, "lease", positive=True)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise TypeError(f"max_attempts must be an int, not {type(max_attempts).__name__}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.max_attempts = max_attempts
        if not isinstance(backoff, (tuple, list)) or len(backoff) != 3:
            raise TypeError("backoff must be a (base, factor, cap) tuple")
        base, factor, cap = (_number(v, f"backoff[{i}]") for i, v in enumerate(backoff))
        if factor < 1 or cap < base:
            raise ValueError(f"backoff {tuple(backoff)!r}: the factor must be at least 1 and the cap at least the "
                             f"base")
        self.backoff = (base, factor, cap)
        self._ser = _Serializer(serializer)
        if sync not in ("normal", "full"):
            raise ValueError(f"sync must be 'normal' or 'full', not {sync!r}")
        self.url = os.fspath(url) if isinstance(url, os.PathLike) else url
        self._b = _open(url, self.name, sync)
        self._wake_key = (self._b.kind, os.path.abspath(self._b.path) if self._b.kind == "sqlite" else
                          str(self.url), self.name)
        self._wake_cond, self._wake_pid = _waker(self._wake_key), os.getpid()
        self._consumers: weakref.WeakSet[Consumer[Any]] = weakref.WeakSet()

    @property
    def _wake(self) -> threading.Condition:
        """This process's waker for the queue (a forked child makes its own)."""
        if self._wake_pid != os.getpid():
            self._wake_cond, self._wake_pid = _waker(self._wake_key), os.getpid()
        return self._wake_cond

    def __repr__(self) -> str:
        return f"<gilfree.DurableQueue {self.url!r} name={self.name!r}>"

    # ---- producers ----------------------------------------------------------------------------------

    def put(self, value: Any, *, key: str | None = None, delay: float = 0) -> str:
        """Store one message; returns its id once it is durable (committed to SQLite's WAL, or XADD
        acknowledged by Redis). ``key`` (a str) travels with it; ``delay`` seconds pass before its first
        delivery. A value the serializer refuses raises here, and nothing is written."""
        return self.put_many([value], key=key, delay=delay)[0]

    def put_many(self, values: Iterable[Any], *, key: str | None = None, delay: float = 0) -> list[str]:
        """Store several messages atomically (after a crash, all of them or none); their ids in order."""
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a str or None, not {type(key).__name__}")
        not_before = time.time() + _number(delay, "delay") if delay else 0.0
        bodies = [(key, self._ser.dumps(v), not_before) for v in values]  # every value before any write
        if not bodies:
            return []
        ids: list[str] = self._b.put_many(bodies)
        with self._wake:
            self._wake.notify_all()
        return ids

    # ---- consumers ----------------------------------------------------------------------------------

    def consumer(self, group: str = "default", name: str | None = None, *, prefetch: int = 1) -> Consumer[Any]:
        """A consumer in ``group`` (created on first use: it starts at the oldest message the queue still
        holds). Iterate it, or ``get``/``get_many``; close it (or use ``with``) when done.

        ``prefetch``: how many messages ``get`` and iteration take from the store at once (as Kafka's
        ``max.poll.records`` or RabbitMQ's prefetch count). More is faster; the messages taken wait here
        under their leases, invisible to the group's other consumers, and one that has waited half its
        lease is handed back instead of out."""
        _check_name(group, "group")
        if name is None:
            name = f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"
        elif not isinstance(name, str) or not name:
            raise TypeError("name must be a non-empty str or None")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int):
            raise TypeError(f"prefetch must be an int, not {type(prefetch).__name__}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self._b.ensure_group(group)
        c: Consumer[Any] = Consumer(self, group, name, prefetch)
        self._consumers.add(c)
        return c

    def dead_letters(self, group: str = "default") -> DeadLetters:
        """The group's dead letters: messages that failed ``max_attempts`` times."""
        return DeadLetters(self, _check_name(group, "group"))

    def stats(self, group: str = "default") -> dict[str, Any]:
        """``ready``, ``leased``, ``delayed`` and ``dead`` counts for the group, ``oldest_age_s`` (the age
        of the oldest message it has not finished) and ``groups`` (every group of the queue)."""
        return dict(self._b.stats(_check_name(group, "group")))

    def close(self) -> None:
        """Close the consumers and the store's connections. Idempotent."""
        for c in list(self._consumers):
            c.close()
        self._b.close()

    def __enter__(self) -> DurableQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _delay_for(self, attempt: int) -> float:
        base, factor, cap = self.backoff
        return float(min(cap, base * factor ** max(0, attempt - 1)))


class Message(Generic[T]):
    """One delivery of a message to a consumer: ``value``, ``id``, ``key``, ``attempt`` (1 on the first
    delivery), ``ack()``, ``nack(delay=None)``, ``extend(seconds)``; ``with msg:`` acks when the block
    ends normally and nacks when it raises (the exception propagates)."""

    __module__ = "gilfree.queue"

    def __init__(self, consumer: Consumer[T], taken: Taken) -> None:
        self._c = consumer
        self._t = taken
        self.id, self.key, self.attempt = taken.id, taken.key, taken.attempt
        self._settled: str | None = None
        self._have_value = False
        self._value: Any = None

    @property
    def value(self) -> T:
        """The value put (deserialized on first access; an error then propagates to the handler)."""
        if not self._have_value:
            self._value = self._c._q._ser.loads(self._t.body)
            self._have_value = True
        return self._value  # type: ignore[no-any-return]

    @property
    def group(self) -> str:
        return self._c.group

    def _settle(self, how: str) -> None:
        if self._settled is not None:
            raise cf.InvalidStateError(f"message {self.id} was already {self._settled}: settle a message once")
        self._settled = how

    def ack(self) -> None:
        """Done: the group will not see this message again. LeaseLost if the lease ran out and the message
        went to another consumer (then that delivery's outcome counts)."""
        self._settle("acked")
        try:
            self._c._q._b.ack(self._c.group, self.id, self._t.token)
        finally:
            self._c._done(self)

    def nack(self, delay: float | None = None, *, error: str | None = None) -> None:
        """Not done: deliver it again after ``delay`` seconds (default: the queue's backoff for this
        attempt), or to the dead letters if this was its last attempt."""
        d = self._c._q._delay_for(self.attempt) if delay is None else _number(delay, "delay")
        self._settle("nacked")
        try:
            self._c._q._b.nack(self._c.group, self.id, self._t.token, time.time() + d, error,
                               self._c._q.max_attempts)
        finally:
            self._c._done(self)

    def extend(self, seconds: float) -> None:
        """Hold the message for ``seconds`` more from now (a handler that needs longer than the lease)."""
        s = _number(seconds, "seconds", positive=True)
        if self._settled is not None:
            raise cf.InvalidStateError(f"message {self.id} was already {self._settled}")
        self._c._q._b.extend(self._c.group, self.id, self._t.token, time.time() + s)

    def __enter__(self) -> Message[T]:
        return self

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._settled is not None:
            return
        if exc is None:
            self.ack()
        else:
            self.nack(error=f"{type(exc).__name__}: {exc}"[:2000])

    def __repr__(self) -> str:
        return f"<gilfree.queue.Message id={self.id} key={self.key!r} attempt={self.attempt} group={self.group!r}>"


class Consumer(Generic[T]):
    """Takes the messages of one group: iterate it (blocks for the next message), ``get``, ``get_many``,
    or feed a Channel (``channel``) or an executor (``serve``). Every wait releases the GIL and lets
    Ctrl-C through within 100 ms."""

    __module__ = "gilfree.queue"

    def __init__(self, q: DurableQueue, group: str, name: str, prefetch: int = 1) -> None:
        self._q, self.group, self.name, self.prefetch = q, group, name, prefetch
        self._buffer: collections.deque[tuple[float, Message[T]]] = collections.deque()  # (taken at, msg)
        self._buffer_lock = threading.Lock()
        self._closed = threading.Event()
        self._hot = False  # the last take found messages
        self._held: dict[str, Message[T]] = {}
        self._held_lock = threading.Lock()
        self._feeder: threading.Thread | None = None

    def _done(self, msg: Message[T]) -> None:
        with self._held_lock:
            self._held.pop(msg.id, None)

    def _take(self, n: int, timeout: float | None) -> list[Message[T]]:
        deadline = None if timeout is None else time.monotonic() + _number(timeout, "timeout")
        pause = 0.001
        b, q = self._q._b, self._q
        while True:
            if self._closed.is_set():
                raise ChannelClosed("the consumer is closed")
            # After a take that found messages, take again at once (more are likely: one round trip);
            # otherwise look first (a read, no write lock) and take only when something is due.
            hint = 0.0 if self._hot else b.wait_hint(self.group)
            if hint is not None and hint <= time.time():
                got = b.take(self.group, self.name, n, q.lease, q.max_attempts)
                self._hot = bool(got)
                if got:
                    msgs = [Message(self, t) for t in got]
                    with self._held_lock:
                        for m in msgs:
                            self._held[m.id] = m
                    return msgs
                continue  # another consumer took them, or they died: look again
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return []
            wait = min(pause, POLL_MAX)
            if hint is not None:
                wait = min(wait, max(0.0, hint - time.time()))
            if deadline is not None:
                wait = min(wait, deadline - now)
            with q._wake:
                q._wake.wait(wait)  # a put in this process wakes it at once
            pause = min(pause * 2, POLL_MAX)

    def _next(self, timeout: float | None) -> Message[T] | None:
        """One message: from the prefetched ones (handing back any that waited half its lease), else from
        the store, taking up to ``prefetch``."""
        while True:
            with self._buffer_lock:
                item = self._buffer.popleft() if self._buffer else None
            if item is None:
                break
            taken_at, msg = item
            if time.monotonic() - taken_at < self._q.lease / 2:
                return msg
            self._release(msg)  # too old to hand out: its lease might run out in the handler
        msgs = self._take(self.prefetch, timeout)
        if not msgs:
            return None
        now = time.monotonic()
        with self._buffer_lock:
            self._buffer.extend((now, m) for m in msgs[1:])
        return msgs[0]

    def get(self, timeout: float | None = None) -> Message[T]:
        """The next message (waiting up to ``timeout`` seconds; None: as long as it takes). TimeoutError
        when none came; ChannelClosed once the consumer is closed."""
        msg = self._next(timeout)
        if msg is None:
            raise TimeoutError(f"no message for group {self.group!r} within {timeout} s")
        return msg

    def ack_many(self, messages: Iterable[Message[T]]) -> None:
        """Ack several messages in one transaction (SQLite) or one round trip (Redis). LeaseLost names
        those whose lease ran out (the others are acked)."""
        msgs = list(messages)
        for m in msgs:
            if m._c is not self:
                raise ValueError(f"message {m.id} was taken by another consumer")
            m._settle("acked")
        try:
            ok = self._q._b.ack_many(self.group, [(m.id, m._t.token) for m in msgs])
        finally:
            for m in msgs:
                self._done(m)
        lost = [m.id for m, good in zip(msgs, ok) if not good]
        if lost:
            raise LeaseLost(f"messages {', '.join(lost)}: their leases ran out and they went to another consumer")

    def get_many(self, n: int, timeout: float | None = None) -> list[Message[T]]:
        """Up to ``n`` messages: waits up to ``timeout`` for the first, then takes what else is ready
        (``[]`` if none came in time)."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        with self._buffer_lock:
            mine = [self._buffer.popleft()[1] for _ in range(min(n, len(self._buffer)))]
        if mine:
            return mine
        return self._take(n, timeout)

    def __iter__(self) -> Iterator[Message[T]]:
        return self

    def __next__(self) -> Message[T]:
        try:
            msg = self._next(None)
        except ChannelClosed:
            raise StopIteration from None
        assert msg is not None
        return msg

    # ---- bridges ------------------------------------------------------------------------------------

    def channel(self, capacity: int = 16) -> Channel[Message[T]]:
        """A bounded Channel that a thread of this consumer keeps fed with messages: it takes more only
        while the channel has room (backpressure), so a pool or a Pipeline reading it consumes at its own
        pace. The reader acks each message when its handler finishes (``with msg:`` or ``acking``); a
        message that waits in the channel uses its lease, so size ``capacity`` to what the handlers finish
        within the lease. Closing the consumer closes the channel and hands back the messages still in it."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if self._feeder is not None:
            raise RuntimeError("this consumer already feeds a channel")
        ch: Channel[Message[T]] = Channel(capacity)

        def feed() -> None:
            try:
                while not self._closed.is_set():
                    room = max(1, capacity - len(ch))
                    msgs = self._take(room, POLL_MAX)
                    for i, m in enumerate(msgs):
                        try:
                            ch.send(m)
                        except ChannelClosed:
                            for rest in msgs[i:]:
                                self._release(rest)
                            return
            except ChannelClosed:
                pass
            finally:
                ch.close()

        self._channel = ch
        self._feeder = threading.Thread(target=feed, name=f"gilfree-queue-feed-{self.group}", daemon=True)
        self._feeder.start()
        return ch

    def serve(self, fn: Callable[[T], object], executor: cf.Executor | None = None, *,
              concurrency: int | None = None, limit: int | None = None) -> int:
        """Run ``fn(msg.value)`` for each message on ``executor`` (a ThreadPool, ProcessPool or any
        concurrent.futures Executor; default: in this thread), at most ``concurrency`` at once, and ack
        each when its call returns or nack it when it raises. Returns the number of messages handled, once
        ``limit`` were or the consumer is closed."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        if executor is None:
            n = 0
            while limit is None or n < limit:
                try:
                    msg = self._next(None)
                except ChannelClosed:
                    break
                assert msg is not None
                try:
                    with msg:
                        fn(msg.value)
                except Exception:  # noqa: BLE001 - nacked; the next message goes on
                    pass
                n += 1
            return n
        width: int = int(concurrency or getattr(executor, "_max_workers", None) or
                         getattr(executor, "max_workers", None) or 4)
        slots = threading.Semaphore(width)
        lock = threading.Lock()
        count = [0]
        taken = 0

        def settle(msg: Message[T], f: cf.Future[Any]) -> None:
            try:
                exc = f.exception()
                if exc is None:
                    msg.ack()
                else:
                    msg.nack(error=f"{type(exc).__name__}: {exc}"[:2000])
            except LeaseLost:
                pass
            finally:
                with lock:  # counted before the slot is free: serve() reads the count once it has every slot
                    count[0] += 1
                slots.release()

        while limit is None or taken < limit:
            acquired = False
            while not self._closed.is_set() and not (acquired := slots.acquire(timeout=POLL_MAX)):
                pass
            if not acquired:
                break
            try:
                got = self._next(None)
            except ChannelClosed:
                slots.release()
                break
            assert got is not None
            msg = got
            try:
                value = msg.value
                fut = executor.submit(fn, value)
            except Exception as e:  # noqa: BLE001 - a value that does not load or an executor that refuses
                f: cf.Future[Any] = cf.Future()
                f.set_exception(e)
                fut = f
            taken += 1
            fut.add_done_callback(functools.partial(settle, msg))
        for _ in range(width):  # wait for the calls in flight
            slots.acquire()
        return count[0]

    # ---- ending -------------------------------------------------------------------------------------

    def _release(self, msg: Message[T]) -> None:
        """Hand a message taken but never handled back at once (its attempt is not counted)."""
        if msg._settled is None:
            msg._settled = "released"
            try:
                self._q._b.release(self.group, msg.id, msg._t.token)
            except LeaseLost:
                pass
            self._done(msg)

    def close(self) -> None:
        """Stop taking messages; the messages still in the channel (if any) go back to the queue at once.
        Messages held by handlers stay theirs to ack until their lease runs out. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._q._wake:
            self._q._wake.notify_all()
        with self._buffer_lock:
            prefetched = [m for _, m in self._buffer]
            self._buffer.clear()
        for m in prefetched:
            self._release(m)
        ch = getattr(self, "_channel", None)
        if ch is not None:
            ch.close()
            if self._feeder is not None and self._feeder is not threading.current_thread():
                self._feeder.join()
            while True:
                try:
                    leftover = ch.recv_nowait()
                except Exception:  # noqa: BLE001 - WouldBlock or ChannelClosed: drained
                    break
                self._release(leftover)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __enter__(self) -> Consumer[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<gilfree.queue.Consumer group={self.group!r} name={self.name!r}{' closed' if self.closed else ''}>"


def acking(fn: Callable[[T], U]) -> Callable[[Message[T]], U]:
    """Wrap a handler of values into a handler of Messages that acks each when ``fn`` returns and nacks it
    when ``fn`` raises (the exception propagates): ``Pipeline(consumer.channel(16)).map(acking(index))``."""
    def handle(msg: Message[T]) -> U:
        with msg:
            return fn(msg.value)
    handle.__name__ = getattr(fn, "__name__", "handle")
    return handle


class DeadLetter(NamedTuple):
    id: str
    key: str | None
    value: Any
    attempts: int
    error: str | None
    died_at: float


class DeadLetters:
    """A group's dead letters: iterate (``DeadLetter`` tuples), ``len()``, ``requeue(ids=None)`` (deliver
    them again, attempts counted afresh) and ``purge(ids=None)`` (drop them); both return how many."""

    __module__ = "gilfree.queue"

    def __init__(self, q: DurableQueue, group: str) -> None:
        self._q, self.group = q, group

    def __iter__(self) -> Iterator[DeadLetter]:
        for i, k, body, a, e, d in self._q._b.dead(self.group):
            try:
                value = self._q._ser.loads(body)
            except Exception as exc:  # noqa: BLE001 - show what can be shown
                value = exc
            yield DeadLetter(i, k, value, a, e, d)

    def __len__(self) -> int:
        return int(self._q._b.stats(self.group)["dead"])

    def requeue(self, ids: Sequence[str] | None = None) -> int:
        n: int = self._q._b.requeue(self.group, None if ids is None else [str(i) for i in ids])
        with self._q._wake:
            self._q._wake.notify_all()
        return n

    def purge(self, ids: Sequence[str] | None = None) -> int:
        return int(self._q._b.purge(self.group, None if ids is None else [str(i) for i in ids]))
