"""gilfree.Channel: the C channel plus its asyncio face.

The blocking API (send/recv/select...) is entirely in C (gilfree._core.Channel). This subclass adds the
coroutine methods, which must never block the event loop: each starts one operation in C that either
completes at once or queues a waiter; when a thread (or another coroutine) completes it, C calls a notify
callable that hops back to the loop with ``loop.call_soon_threadsafe``.

Cancellation: cancelling the awaiting task withdraws the pending operation in C, so nothing is sent or
taken. If a peer completed it in the same instant: a recv puts the value it took back in front of the channel
(the next receiver gets it) and the task is cancelled as asked; a send, whose value is already in a
receiver's hands, returns normally (it happened), so asyncio.timeout() and wait_for() report the completed
send instead of a timeout; the cancel is then delivered at the task's next step (or at its next channel
operation, before anything is sent or taken), unless such a timeout context took it back. Nothing is lost or
duplicated, and no cancel is swallowed.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any, AsyncIterator, TypeVar

from . import _core

T = TypeVar("T")

__all__ = ["Channel"]


def _set_done(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class _Notify:
    """Called by C, from whichever thread completed the operation, with no channel lock held."""

    __slots__ = ("loop", "fut")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
        self.loop = loop
        self.fut = fut

    def __call__(self) -> None:
        loop = self.loop
        if loop.is_closed():
            return  # nobody can await it any more
        try:
            loop.call_soon_threadsafe(_set_done, self.fut)
        except RuntimeError:  # closed between the check and the call
            pass


# Tasks whose cancel arrived as their send completed: the cancelling() count it was seen at. The send returns
# (its value was delivered); the cancel is delivered again at the task's next step unless a timeout context
# took it back meanwhile (asyncio.timeout()/wait_for() uncancel() on their way out).
_owed: "weakref.WeakKeyDictionary[asyncio.Task[Any], int]" = weakref.WeakKeyDictionary()


def _redeliver(task: "asyncio.Task[Any]") -> None:
    n = _owed.pop(task, None)
    if n is not None and not task.done() and task.cancelling() >= n:
        # Still requested and nobody took it back: cancel again, keeping the count as the canceller left it.
        task.uncancel()
        task.cancel()


def _pay_owed_cancel() -> None:
    """At the start of an async operation: a cancel owed to this task (see _owed) is raised here, before
    anything is sent or taken, if the task never yielded to the loop since (a busy loop of sends that all
    complete at once would otherwise never see it)."""
    task = asyncio.current_task()
    if task is None:
        return
    n = _owed.pop(task, None)
    if n is not None and task.cancelling() >= n:
        raise asyncio.CancelledError()


async def _await_op(op: Any, fut: asyncio.Future[None]) -> Any:
    if not op.done():
        try:
            await fut
        except asyncio.CancelledError:
            if op.cancel():
                raise  # withdrawn, or a received value put back: nothing was sent or taken
            # A send completed as we were cancelled: the value was delivered, so the send returns, as
            # asyncio does for an operation that completed; asyncio.timeout()/wait_for() then see a
            # completed send, not a timeout. The cancel itself is not swallowed: it is owed to the task and
            # delivered at its next step (or its next gilfree operation), unless such a timeout context took
            # it back (uncancel) on its way out.
            task = asyncio.current_task()
            if task is not None:
                _owed[task] = task.cancelling()
                task.get_loop().call_soon(_redeliver, task)
    return op.result()


# The queue.Queue / asyncio.Queue / multiprocessing.Queue names users reach for, and their channel forms.
_QUEUE_NAMES = {"put": "send(value)", "get": "recv()", "put_nowait": "send_nowait(value)",
                "get_nowait": "recv_nowait()", "qsize": "len(ch)", "empty": "len(ch) == 0",
                "full": "len(ch) == ch.capacity", "task_done": "close() when done sending, and `for v in ch` to receive",
                "join": "close() when done sending, and `for v in ch` to receive"}


def _missing(obj: object, name: str) -> AttributeError:
    """AttributeError for a missing attribute, with the channel's form of a queue method."""
    msg = f"{type(obj).__name__!r} object has no attribute {name!r}"
    if name in _QUEUE_NAMES:
        msg += f" (a channel is not a queue.Queue: use {_QUEUE_NAMES[name]})"
    err = AttributeError(msg)
    err.name, err.obj = name, obj
    return err


class Channel(_core.Channel[T]):
    """A Go-style channel shared by threads and coroutines.

    ``Channel(capacity=0)``: 0 is unbuffered (a send completes when a receiver takes the value), ``N > 0``
    bounded (``send`` blocks while N values wait: backpressure), ``None`` unbounded.

    - ``send(value, timeout=None)`` / ``recv(timeout=None)`` block with the GIL released; TimeoutError when
      the timeout passes (None, inf or anything past ~31 years: never). A send that raised delivered
      nothing; one that returned delivered exactly once.
    - ``send_nowait`` / ``recv_nowait`` never block: WouldBlock. ``send_many(iterable)`` /
      ``recv_many(max_items)`` move batches (errors carry ``.sent``; a failed recv_many took nothing).
    - ``close()`` is idempotent: blocked senders raise ChannelClosed; receivers drain what is buffered,
      then get ChannelClosed (``for v in ch`` ends; a select recv case yields ``gilfree.CLOSED``).
    - One sender's values arrive in order; blocked senders and receivers are served first come, first
      served. Ctrl-C reaches a blocked main thread within 100 ms and takes nothing.
    - ``await send_async(v)`` / ``await recv_async()`` / ``async for`` from asyncio: the loop never blocks,
      and cancelling the awaiting task withdraws the operation without losing a value.

    >>> ch = Channel(2)
    >>> ch.send(1); ch.send(2); ch.close()
    >>> list(ch)
    [1, 2]
    """

    __slots__ = ()
    __module__ = "gilfree"

    def __bool__(self) -> bool:
        """Always True: a channel is an object, not a container, as a queue.Queue is (``len(ch)`` counts the
        values buffered, as Go's ``len(ch)`` does; ``if ch:`` does not ask that)."""
        return True

    if not TYPE_CHECKING:  # at run time only: a type checker still reports ch.put as an error

        def __getattr__(self, name: str) -> Any:
            raise _missing(self, name)

    async def send_async(self, value: T) -> None:
        """Send from a coroutine; the event loop never blocks. Raises ChannelClosed like send()."""
        _pay_owed_cancel()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        op = self._async_send(value, _Notify(loop, fut))
        await _await_op(op, fut)

    async def recv_async(self) -> T:
        """Receive from a coroutine; the event loop never blocks. Raises ChannelClosed like recv()."""
        _pay_owed_cancel()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        op = self._async_recv(_Notify(loop, fut))
        result: T = await _await_op(op, fut)
        return result

    def __aiter__(self) -> AsyncIterator[T]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[T]:
        while True:
            try:
                value = await self.recv_async()
            except _core.ChannelClosed:
                return
            yield value
