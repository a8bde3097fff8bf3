"""Channel from asyncio: send_async / recv_async / async for, threads and coroutines together,
and cancellation that withdraws without losing or duplicating a value."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter

import pytest
from conftest import Background, scaled, wait_until

from gilfree import Channel, ChannelClosed


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_send_and_recv_between_coroutines() -> None:
    async def main() -> list[int]:
        ch: Channel[int] = Channel()

        async def produce() -> None:
            for i in range(100):
                await ch.send_async(i)
            ch.close()

        task = asyncio.create_task(produce())
        got = [v async for v in ch]
        await task
        return got

    assert run(main()) == list(range(100))


def test_recv_async_completes_immediately_when_ready() -> None:
    async def main() -> int:
        ch: Channel[int] = Channel(1)
        ch.send(5)
        return await ch.recv_async()

    assert run(main()) == 5


def test_closed_raises_in_coroutines() -> None:
    async def main() -> None:
        ch: Channel[int] = Channel(1)
        waiter = asyncio.create_task(ch.recv_async())
        await asyncio.sleep(0.01)
        ch.close()
        with pytest.raises(ChannelClosed):
            await waiter
        with pytest.raises(ChannelClosed):
            await ch.send_async(1)
        full: Channel[int] = Channel(1)
        full.send(0)
        sender = asyncio.create_task(full.send_async(1))
        await asyncio.sleep(0.01)
        full.close()
        with pytest.raises(ChannelClosed):
            await sender
        assert list(full) == [0]

    run(main())


def test_event_loop_never_blocks_while_waiting_on_a_thread() -> None:
    async def main() -> int:
        ch: Channel[int] = Channel()
        beats = 0

        async def heartbeat() -> None:
            nonlocal beats
            while True:
                beats += 1
                await asyncio.sleep(0.005)

        hb = asyncio.create_task(heartbeat())
        threading.Timer(0.3, ch.send, args=(99,)).start()
        t0 = time.monotonic()
        v = await ch.recv_async()
        assert time.monotonic() - t0 >= 0.25
        hb.cancel()
        assert beats > 10, "the event loop was blocked while the coroutine waited"
        return v

    assert run(main()) == 99


def test_threads_and_coroutines_share_one_channel() -> None:
    n = scaled(2000)
    ch: Channel[int] = Channel(8)
    results: Channel[int] = Channel(None)

    def thread_producer(base: int) -> None:
        for i in range(n):
            ch.send(base + i)

    def thread_consumer() -> None:
        for v in ch:
            results.send(v)

    async def main() -> None:
        async def coro_producer(base: int) -> None:
            for i in range(n):
                await ch.send_async(base + i)

        async def coro_consumer() -> None:
            async for v in ch:
                results.send(v)

        consumers = [asyncio.create_task(coro_consumer()) for _ in range(2)]
        await asyncio.gather(coro_producer(0), coro_producer(n))
        await asyncio.to_thread(lambda: [p.join(60) for p in tprods])
        ch.close()
        await asyncio.gather(*consumers)

    tprods = [Background(thread_producer, 2 * n), Background(thread_producer, 3 * n)]
    tcons = [Background(thread_consumer) for _ in range(2)]
    run(main())
    for c in tcons:
        c.join(60)
    results.close()
    got = list(results)
    assert sorted(got) == list(range(4 * n))


@pytest.mark.parametrize("capacity", [0, 1, 16])
def test_cancelled_receivers_lose_nothing(capacity: int) -> None:
    """Many recv_async tasks are cancelled at random moments while a thread sends: every value sent is
    received exactly once (by a task that returned it) or is still in the channel."""
    n = scaled(3000)
    ch: Channel[int] = Channel(capacity)

    async def main() -> list[int]:
        received: list[int] = []
        rng = random.Random(1)
        producer = Background(lambda: [ch.send(i, timeout=30) for i in range(n)])
        while not producer.done.is_set() or len(ch):
            task = asyncio.create_task(ch.recv_async())
            await asyncio.sleep(0 if rng.random() < 0.5 else 0.0001)
            task.cancel()
            try:
                received.append(await task)
            except asyncio.CancelledError:
                pass
        producer.join(60)
        received.extend(ch.recv_many(n + 1) if len(ch) else [])
        return received

    got = run(main())
    c = Counter(got)
    assert not [v for v, k in c.items() if k > 1], "a value was received twice"
    assert sorted(c) == list(range(n)), "a value was lost"


def test_cancelled_sender_delivers_nothing_or_exactly_once() -> None:
    n = scaled(2000)
    ch: Channel[int] = Channel(0)
    delivered: list[int] = []
    stop = threading.Event()

    def consume() -> list[int]:
        out = []
        while not stop.is_set():
            try:
                out.append(ch.recv(timeout=0.01))
            except TimeoutError:
                pass
        return out

    consumer = Background(consume)

    async def main() -> None:
        rng = random.Random(2)
        async def send_and_mark(i: int) -> None:
            await ch.send_async(i)
            delivered.append(i)  # runs only if send_async returned

        for i in range(n):
            task = asyncio.create_task(send_and_mark(i))
            await asyncio.sleep(0 if rng.random() < 0.5 else 0.0002)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    run(main())
    stop.set()
    received = consumer.join(30)
    assert received == delivered  # returned => delivered once; cancelled => nothing


def test_cancelled_recv_that_had_completed_puts_the_value_back() -> None:
    async def main() -> None:
        ch: Channel[int] = Channel()
        task = asyncio.create_task(ch.recv_async())
        await asyncio.sleep(0.01)
        ch.send_nowait(1)  # completes the pending recv (its wake-up is queued)
        task.cancel()  # ...and the task is cancelled before it runs
        # The value is not lost: the task is cancelled and the value goes back to the channel.
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ch.recv_nowait() == 1
        assert len(ch) == 0

    run(main())


def test_closed_loop_does_not_break_the_sender() -> None:
    ch: Channel[int] = Channel()
    loop = asyncio.new_event_loop()
    task = loop.create_task(ch.recv_async())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert ch._waiters() == (1, 0)
    loop.close()
    ch.send_nowait(1)  # the receiver's loop is gone: the notify is skipped, no exception here
    del task


def test_abandoned_coroutine_withdraws() -> None:
    import gc

    ch: Channel[int] = Channel()

    async def main() -> None:
        task = asyncio.create_task(ch.recv_async())
        await asyncio.sleep(0.01)
        assert ch._waiters() == (1, 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    gc.collect()
    assert ch._waiters() == (0, 0)
    with pytest.raises(Exception):
        ch.send_nowait(1)  # nobody waits any more: WouldBlock


def test_async_for_ends_at_close() -> None:
    async def main() -> list[int]:
        ch: Channel[int] = Channel(None)
        ch.send_many([1, 2, 3])
        ch.close()
        return [v async for v in ch]

    assert run(main()) == [1, 2, 3]


def test_many_waiting_coroutines_woken_by_threads() -> None:
    n = 200
    ch: Channel[int] = Channel()

    async def main() -> list[int]:
        tasks = [asyncio.create_task(ch.recv_async()) for _ in range(n)]
        await asyncio.sleep(0.01)
        feeder = Background(lambda: [ch.send(i) for i in range(n)])
        got = await asyncio.gather(*tasks)
        feeder.join()
        return list(got)

    got = run(main())
    assert sorted(got) == list(range(n))
    wait_until(lambda: ch._waiters() == (0, 0))


def test_cancelled_send_that_had_completed_returns_and_leaves_the_cancel_count() -> None:
    async def main() -> None:
        ch: Channel[int] = Channel()
        steps: list[str] = []

        async def sender() -> int:
            await ch.send_async(1)
            steps.append("returned")  # the send was delivered, so it returns
            task = asyncio.current_task()
            assert task is not None
            return task.cancelling()  # asyncio's record that a cancel was requested is left as it was

        task = asyncio.create_task(sender())
        await asyncio.sleep(0.01)
        assert ch.recv_nowait() == 1  # completes the pending send
        task.cancel()
        assert await task == 1
        assert steps == ["returned"]

    run(main())


def test_wait_for_send_that_delivered_never_reports_a_timeout_nor_cancels_the_caller() -> None:
    """The race: the send is delivered in the loop turn its timeout fires. It must return (the value was
    delivered), and no CancelledError may escape into the task around wait_for."""
    n = scaled(300)
    ch: Channel[int] = Channel(0)

    async def main() -> tuple[int, int]:
        got: list[int] = []
        receiver = Background(lambda: got.extend(ch))
        delivered = timeouts = 0
        for i in range(n):
            try:
                await asyncio.wait_for(ch.send_async(i), 0.0002)
                delivered += 1
            except (asyncio.TimeoutError, TimeoutError):
                timeouts += 1
        ch.close()
        receiver.join()
        # every send reported delivered was received, and every one received was reported delivered
        assert len(got) == delivered and sorted(got) == sorted(set(got))
        return delivered, timeouts

    delivered, timeouts = run(main())
    assert delivered + timeouts == n


def test_wait_for_recv_never_loses_values() -> None:
    """asyncio.wait_for wraps recv_async in a task: values a timed-out wait took go back."""
    n = scaled(500)
    ch: Channel[int] = Channel(0)

    async def main() -> list[int]:
        got: list[int] = []
        producer = Background(lambda: [ch.send(i, timeout=30) for i in range(n)])
        while len(got) < n:
            try:
                got.append(await asyncio.wait_for(ch.recv_async(), 0.0005))
            except (asyncio.TimeoutError, TimeoutError):
                pass
        producer.join()
        return got

    assert sorted(run(main())) == list(range(n))


def test_a_cancel_that_lands_as_a_send_completes_is_delivered_to_the_task() -> None:
    """`while True: await ch.send_async(x)` cancelled at any moment must end cancelled: a cancel that landed
    as its send completed used to be swallowed (the send returned, the loop went on, `await task` hung).
    Every send that returned was received, and nothing else was."""
    rounds = scaled(300)
    ch: Channel[int] = Channel(0)
    received: list[int] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            try:
                received.append(ch.recv(timeout=0.01))
            except TimeoutError:
                pass

    consumer = Background(consume)

    async def main() -> tuple[list[int], int]:
        rng = random.Random(5)
        returned: list[int] = []
        counter = iter(range(10**9))

        async def pump() -> None:
            while True:
                i = next(counter)
                await ch.send_async(i)
                returned.append(i)

        not_cancelled = 0
        for _ in range(rounds):
            task = asyncio.create_task(pump())
            await asyncio.sleep(rng.choice([0, 0, 0.0001, 0.0003, 0.001]))
            task.cancel()
            try:
                await asyncio.wait_for(task, 5)  # hung when the cancel was swallowed
            except asyncio.CancelledError:
                pass
            if not task.cancelled():
                not_cancelled += 1
        return returned, not_cancelled

    returned, not_cancelled = run(main())
    stop.set()
    consumer.join(30)
    assert not_cancelled == 0
    assert received == returned  # a send returned <=> its value was received, in order


def test_a_cancel_owed_is_raised_before_the_next_operation_takes_anything() -> None:
    """A task that never yields between sends (each completes at once) still gets its cancel: at its next
    channel operation, before anything is sent or taken."""

    async def main() -> None:
        ch: Channel[int] = Channel(None)
        gate: Channel[int] = Channel()
        steps: list[str] = []

        async def sender() -> None:
            await gate.send_async(1)  # cancelled as it completes
            steps.append("delivered")
            for i in range(3):
                await ch.send_async(i)  # unbounded: would complete at once, never yielding
                steps.append(f"sent {i}")

        task = asyncio.create_task(sender())
        await asyncio.sleep(0.01)
        assert gate.recv_nowait() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert steps == ["delivered"]
        assert len(ch) == 0

    run(main())
