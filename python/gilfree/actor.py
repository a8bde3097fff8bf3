"""gilfree.Actor and gilfree.Supervisor: actors on a shared pool, supervised as in Erlang/OTP.

An actor is an object with a mailbox (a gilfree.Channel) that handles one message at a time, in arrival
order. Actors do not own threads: when a message arrives at an idle actor, one task is submitted to the
pool; it handles messages until the mailbox is empty and then returns. 10,000 idle actors cost 10,000
channels and no thread.

    class Counter(gilfree.Actor):
        def __init__(self, start=0): self.n = start
        def receive(self, message):
            self.n += message
            return self.n

    ref = Counter.start(10, mailbox=100)
    ref.tell(1)                      # blocks while a bounded mailbox is full: backpressure
    assert ref.ask(1).result() == 12
    ref.stop()
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import threading
import time
from typing import Any, Callable, Sequence

from . import _core
from ._channel import Channel
from ._future import Future

__all__ = ["Actor", "ActorRef", "ActorStopped", "Supervisor"]


DEFAULT_MAILBOX = 1024


def _check_mailbox(mailbox: Any) -> None:
    if mailbox is None:
        return
    if isinstance(mailbox, bool) or not isinstance(mailbox, int):
        raise TypeError(f"mailbox must be an int or None, not {type(mailbox).__name__}")
    if mailbox < 1:
        # An unbuffered mailbox would make tell wait for a receive that is only scheduled after it.
        raise ValueError(f"mailbox must be >= 1 (a bounded mailbox) or None (unbounded), got {mailbox}")


class ActorStopped(RuntimeError):
    """The actor is stopped: it takes no more messages."""

    __module__ = "gilfree"


class Actor:
    """Subclass and define ``receive(self, message)``; start with ``MyActor.start(*args, mailbox=1024,
    pool=None, **kwargs)``. ``mailbox`` is the mailbox channel's capacity, as for ``Channel``: N (bounded,
    the default 1024: ``tell`` blocks while it is full) or None (unbounded). Hooks: ``on_start``,
    ``on_stop``, ``on_failure(exc)``."""

    __module__ = "gilfree"

    def receive(self, message: Any) -> Any:
        """Handle one message; the return value answers an ``ask`` (an exception raised here answers it
        instead, then ``on_failure`` runs and a supervisor may restart the actor). Runs on the pool, one
        message at a time per actor, in arrival order."""
        raise NotImplementedError("an Actor subclass defines receive(self, message)")

    def on_start(self) -> None:
        """Called before the first message (and after each restart)."""

    def on_stop(self) -> None:
        """Called once the actor stops (or before it is restarted with fresh state)."""

    def on_failure(self, exc: BaseException) -> None:
        """Called when receive raised (the message is dropped; an ask gets the exception)."""

    @classmethod
    def start(cls, *args: Any, mailbox: int | None = DEFAULT_MAILBOX, pool: Any = None, **kwargs: Any
              ) -> ActorRef:
        """Start an actor of this class (``cls(*args, **kwargs)``) and return its ref."""
        _check_mailbox(mailbox)
        if pool is not None and not isinstance(pool, cf.Executor):
            raise TypeError("pool must be a concurrent.futures.Executor or None")
        return ActorRef(cls, args, kwargs, mailbox, pool)


class ActorRef:
    """The handle to a running actor: tell, ask, stop. A restart keeps the ref (and its mailbox)."""

    __module__ = "gilfree"

    def __init__(self, cls: type[Actor], args: tuple[Any, ...], kwargs: dict[str, Any], mailbox: int | None,
                 pool: Any) -> None:
        if pool is None:
            from ._parallel import default_pool

            pool = default_pool()
        self._cls, self._args, self._kwargs, self._pool = cls, args, kwargs, pool
        self._mailbox: Channel[tuple[Any, Future[Any] | None]] = Channel(mailbox)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a receive ends
        self._busy: int | None = None  # the thread ident running receive now, or None
        self._stop_after_receive = False  # stop() called from inside receive: on_stop runs once it returns
        self._scheduled = False
        self._stopped = False
        self._supervisor: Supervisor | None = None
        self._instance = self._fresh()

    def _fresh(self) -> Actor:
        instance = self._cls(*self._args, **self._kwargs)
        instance.on_start()
        return instance

    @property
    def alive(self) -> bool:
        return not self._stopped

    def tell(self, message: Any) -> None:
        """Send a message; blocks while a bounded mailbox is full. ActorStopped once stopped."""
        self._post(message, None)

    def ask(self, message: Any, timeout: float | None = None) -> Future[Any]:
        """Send a message; the future gets receive's return value or its exception."""
        fut: Future[Any] = Future()
        self._post(message, fut, timeout)
        return fut

    def _post(self, message: Any, fut: Future[Any] | None, timeout: float | None = None) -> None:
        try:
            self._mailbox.send((message, fut), timeout=timeout)
        except _core.ChannelClosed:
            raise ActorStopped(f"{self._cls.__name__} is stopped") from None
        self._schedule()

    def _schedule(self) -> None:
        with self._lock:
            if self._scheduled or self._stopped:
                return
            self._scheduled = True
        self._pool.submit(self._drain)

    def _drain(self) -> None:
        while True:
            try:
                message, fut = self._mailbox.recv_nowait()
            except (_core.WouldBlock, _core.ChannelClosed):
                with self._lock:
                    self._scheduled = False
                # a message may have arrived between the last recv and the flag: look once more
                if len(self._mailbox) and not self._stopped:
                    self._schedule()
                return
            self._handle(message, fut)

    def _handle(self, message: Any, fut: Future[Any] | None) -> None:
        with self._lock:
            if self._stopped:  # taken from the mailbox as stop() closed it
                if fut is not None and fut.set_running_or_notify_cancel():
                    fut.set_exception(ActorStopped(f"{self._cls.__name__} stopped"))
                return
            self._busy = threading.get_ident()
        try:
            self._receive(message, fut)
        finally:
            with self._lock:
                self._busy = None
                stop_now, self._stop_after_receive = self._stop_after_receive, False
                self._idle.notify_all()
            if stop_now:
                self._instance.on_stop()

    def _receive(self, message: Any, fut: Future[Any] | None) -> None:
        if fut is not None and not fut.set_running_or_notify_cancel():
            return
        instance = self._instance
        try:
            result = instance.receive(message)
        except BaseException as e:  # noqa: BLE001 - the actor's failure, handled below
            # The state first (on_failure, the supervisor's restart), then the ask's answer: whoever the
            # answer wakes finds the failure already handled.
            try:
                instance.on_failure(e)
            finally:
                try:
                    if self._supervisor is not None:
                        self._supervisor._child_failed(self, e)
                finally:
                    if fut is not None:
                        fut.set_exception(e)
            return
        if fut is not None:
            fut.set_result(result)

    def _restart(self) -> None:
        old = self._instance
        try:
            old.on_stop()
        finally:
            self._instance = self._fresh()

    def stop(self) -> None:
        """Stop (idempotent): later tell/ask raise ActorStopped; queued asks fail with it. A receive that is
        running finishes first: on_stop runs after it (called from inside receive, once receive returns)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            inside = self._busy == threading.get_ident()
            if inside:
                self._stop_after_receive = True
            else:
                while self._busy is not None:
                    self._idle.wait()
        self._mailbox.close()
        for message, fut in self._mailbox:
            if fut is not None and fut.set_running_or_notify_cancel():
                fut.set_exception(ActorStopped(f"{self._cls.__name__} stopped"))
        if not inside:
            self._instance.on_stop()

    def __repr__(self) -> str:
        return f"<gilfree.ActorRef {self._cls.__name__} {'alive' if self.alive else 'stopped'}>"


ChildSpec = type[Actor] | tuple[Any, ...]


class Supervisor:
    """Starts its children and restarts a child whose receive raises, per ``strategy``:
    ``one_for_one`` (that child), ``one_for_all`` (every child) or ``rest_for_one`` (that child and those
    started after it); a restart gives fresh state behind the same ref. More than ``max_restarts`` restarts
    within ``within`` seconds stop every child, and ``failure`` (a Future) gets the cause; a supervisor
    that is itself supervised (``parent=``) reports it to its parent."""

    __module__ = "gilfree"

    def __init__(self, children: Sequence[ChildSpec], strategy: str = "one_for_one", max_restarts: int = 3,
                 within: float = 5.0, *, pool: Any = None,
                 parent: Callable[[BaseException], None] | None = None) -> None:
        if strategy not in ("one_for_one", "one_for_all", "rest_for_one"):
            raise ValueError(f"strategy must be one_for_one, one_for_all or rest_for_one, not {strategy!r}")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError("max_restarts must be an int >= 0")
        if not within > 0:
            raise ValueError("within must be positive")
        self.strategy, self.max_restarts, self.within = strategy, max_restarts, within
        self.failure: Future[None] = Future()
        self._parent = parent
        self._restarts: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self._giving_up = False
        self.children: list[ActorRef] = []
        for spec in children:
            cls, args, kwargs, mailbox = self._spec(spec)
            ref = cls.start(*args, mailbox=mailbox, pool=pool, **kwargs)
            ref._supervisor = self
            self.children.append(ref)

    @staticmethod
    def _spec(spec: ChildSpec) -> tuple[type[Actor], tuple[Any, ...], dict[str, Any], int | None]:
        if isinstance(spec, type) and issubclass(spec, Actor):
            return spec, (), {}, DEFAULT_MAILBOX
        if isinstance(spec, tuple) and spec and isinstance(spec[0], type) and issubclass(spec[0], Actor):
            args = tuple(spec[1]) if len(spec) > 1 else ()
            kwargs = dict(spec[2]) if len(spec) > 2 else {}
            return spec[0], args, kwargs, spec[3] if len(spec) > 3 else DEFAULT_MAILBOX
        raise TypeError("a child is an Actor subclass or (cls, args, kwargs[, mailbox])")

    def _child_failed(self, ref: ActorRef, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            if self.failure.done() or self._giving_up:
                return
            self._restarts.append(now)
            while self._restarts and now - self._restarts[0] > self.within:
                self._restarts.popleft()
            give_up = len(self._restarts) > self.max_restarts
            self._giving_up = give_up  # one thread stops the children; a sibling failing meanwhile returns
        if give_up:
            self.stop()
            # The parent is told before `failure` completes: whoever `failure` wakes finds the parent told.
            try:
                if self._parent is not None:
                    self._parent(exc)
            finally:
                try:
                    self.failure.set_exception(exc)
                except cf.InvalidStateError:
                    pass
            return
        i = self.children.index(ref)
        if self.strategy == "one_for_one":
            targets = [ref]
        elif self.strategy == "one_for_all":
            targets = list(self.children)
        else:
            targets = self.children[i:]
        for t in targets:
            t._restart()

    def stop(self) -> None:
        """Stop every child (last started first)."""
        for ref in reversed(self.children):
            ref.stop()
