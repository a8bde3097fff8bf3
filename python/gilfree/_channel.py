"""gilfree.Channel: the C channel plus its asyncio face.

The blocking API (send/recv/select...) is entirely in C (gilfree._core.Channel). This subclass adds the
coroutine methods, which must never block the event loop: each starts one operation in C that either
completes at once or queues a waiter; when a thread (or another coroutine) completes it, C calls a notify
callable that hops back to the loop with ``loop.call_soon_threadsafe``.

Cancellation: cancelling the awaiting task withdraws the pending operation in C, so nothing is sent or
taken. If a peer completed it in the same instant: a recv puts the value it took back in front of the channel
(the next receiver gets it) and the task is cancelled as asked; a send, whose value is already in a
receiver's hands, returns normally (it happened), and the task's cancelling() count stays as the canceller
left it, so asyncio.timeout() and wait_for() report the completed send instead of a timeout. Nothing is lost
or duplicated.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, TypeVar

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


async def _await_op(op: Any, fut: asyncio.Future[None]) -> Any:
    if not op.done():
        try:
            await fut
        except asyncio.CancelledError:
            if op.cancel():
                raise  # withdrawn, or a received value put back: nothing was sent or taken
            # A send completed as we were cancelled: the value was delivered, so the send returns, as
            # asyncio does for an operation that completed (the task's cancelling() count is left as the
            # canceller set it: asyncio.timeout()/wait_for() then see a completed send, not a timeout).
    return op.result()


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

    async def send_async(self, value: T) -> None:
        """Send from a coroutine; the event loop never blocks. Raises ChannelClosed like send()."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        op = self._async_send(value, _Notify(loop, fut))
        await _await_op(op, fut)

    async def recv_async(self) -> T:
        """Receive from a coroutine; the event loop never blocks. Raises ChannelClosed like recv()."""
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
