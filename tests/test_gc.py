"""GC and reference counting: channels holding values, cycles through them, refcounts of sent objects."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref

import pytest

from gilfree import Channel, ChannelClosed


class Payload:
    pass


def test_refcount_back_after_drain() -> None:
    obj = Payload()
    base = sys.getrefcount(obj)
    for cap in (1, 64, None):
        ch: Channel[Payload] = Channel(cap)
        ch.send(obj)
        assert sys.getrefcount(obj) == base + 1
        assert ch.recv() is obj
        assert sys.getrefcount(obj) == base
        ch.send_many([obj] * (cap or 10))
        assert sys.getrefcount(obj) == base + (cap or 10)
        ch.recv_many(1000)
        assert sys.getrefcount(obj) == base


def test_refcount_back_after_deleting_a_full_channel() -> None:
    obj = Payload()
    base = sys.getrefcount(obj)
    ch: Channel[Payload] = Channel(100)
    ch.send_many([obj] * 100)
    assert sys.getrefcount(obj) == base + 100
    del ch
    assert sys.getrefcount(obj) == base
    closed: Channel[Payload] = Channel(None)
    closed.send_many([obj] * 10)
    closed.close()
    del closed
    assert sys.getrefcount(obj) == base


def test_channel_holding_values_is_collected() -> None:
    ch: Channel[Payload] = Channel(None)
    p = Payload()
    ref = weakref.ref(p)
    ch.send(p)
    del p
    assert ref() is not None
    del ch
    assert ref() is None


def test_cycle_through_a_channel_is_collected() -> None:
    gc.collect()
    ch: Channel[object] = Channel(None)
    holder = Payload()
    holder.ch = ch  # type: ignore[attr-defined]
    ch.send(holder)
    ch.send(ch)  # the channel holds itself
    ref = weakref.ref(ch)
    href = weakref.ref(holder)
    del ch, holder
    assert ref() is not None
    gc.collect()
    assert ref() is None and href() is None


def test_gc_tracks_channel_contents() -> None:
    ch: Channel[Payload] = Channel(4)
    p = Payload()
    ch.send(p)
    assert any(r is ch for r in gc.get_referrers(p))
    assert gc.is_tracked(ch)


def test_pending_async_op_in_a_garbage_cycle_is_withdrawn() -> None:
    ch: Channel[int] = Channel()
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(ch.recv_async())
        loop.run_until_complete(asyncio.sleep(0.01))
        assert ch._waiters() == (1, 0)
        task.cancel()
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        loop.close()
    del task
    gc.collect()
    assert ch._waiters() == (0, 0)


def test_pending_async_send_value_is_released() -> None:
    obj = Payload()
    base = sys.getrefcount(obj)
    ch: Channel[Payload] = Channel()

    async def main() -> None:
        t = asyncio.create_task(ch.send_async(obj))
        await asyncio.sleep(0.01)
        assert ch._waiters() == (0, 1)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())
    gc.collect()
    assert sys.getrefcount(obj) == base
    ch.close()
    with pytest.raises(ChannelClosed):
        ch.recv_nowait()
