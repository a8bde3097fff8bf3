"""gilfree.Future: the concurrent.futures.Future API (ported from the ideas of CPython's
test_concurrent_futures FutureTests), drop-in use by the standard library, await, then/gather/first."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import sys
import threading
import time

import pytest
from conftest import Background, interrupt_child, scaled, wait_until

import gilfree
from gilfree import Future


def make(state: str, value: object = None) -> Future[object]:
    f: Future[object] = Future()
    if state == "running":
        assert f.set_running_or_notify_cancel()
    elif state == "cancelled":
        assert f.cancel()
    elif state == "cancelled_notified":
        assert f.cancel()
        assert not f.set_running_or_notify_cancel()
    elif state == "result":
        f.set_result(value)
    elif state == "exception":
        f.set_exception(value)  # type: ignore[arg-type]
    return f


def test_is_a_concurrent_futures_future() -> None:
    f: Future[int] = Future()
    assert isinstance(f, cf.Future)
    with pytest.raises(TypeError):
        Future(1)  # type: ignore[call-arg]


def test_states_like_the_standard_library() -> None:
    assert make("pending")._state == "PENDING"
    assert make("running")._state == "RUNNING"
    assert make("cancelled")._state == "CANCELLED"
    assert make("cancelled_notified")._state == "CANCELLED_AND_NOTIFIED"
    assert make("result", 1)._state == "FINISHED"
    f = make("pending")
    assert not f.done() and not f.running() and not f.cancelled()
    f = make("running")
    assert f.running() and not f.done()
    assert not f.cancel()  # running: cannot cancel
    f = make("cancelled")
    assert f.cancelled() and f.done() and f.cancel()
    f = make("result", 5)
    assert f.done() and not f.cancel() and f.result() == 5 and f.exception() is None


def test_result_and_exception() -> None:
    err = ValueError("boom")
    f = make("exception", err)
    with pytest.raises(ValueError, match="boom"):
        f.result()
    assert f.exception() is err
    with pytest.raises(cf.CancelledError):
        make("cancelled").result()
    with pytest.raises(cf.CancelledError):
        make("cancelled_notified").exception()
    g: Future[object] = Future()
    g.set_exception(KeyError)  # a class, as raise accepts
    assert isinstance(g.exception(), KeyError)
    with pytest.raises(TypeError, match="exception"):
        Future().set_exception(3)  # type: ignore[arg-type]


def test_set_twice_is_invalid_state() -> None:
    f = make("result", 1)
    with pytest.raises(cf.InvalidStateError):
        f.set_result(2)
    with pytest.raises(cf.InvalidStateError):
        f.set_exception(ValueError())
    with pytest.raises(cf.InvalidStateError):
        make("cancelled").set_result(1)
    assert f.result() == 1
    with pytest.raises(RuntimeError):
        make("result", 1).set_running_or_notify_cancel()


def test_result_timeout_and_wait_from_threads() -> None:
    f: Future[int] = Future()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        f.result(timeout=0.1)
    assert time.monotonic() - t0 >= 0.09
    with pytest.raises(TimeoutError):
        f.exception(timeout=0)
    waiters = [Background(f.result, 5.0) for _ in range(5)]
    time.sleep(0.05)
    f.set_result(42)
    assert [w.join() for w in waiters] == [42] * 5  # kept once, returned to every waiter
    with pytest.raises(ValueError):
        f.result(timeout=-1)


def test_result_releases_the_gil() -> None:
    f: Future[int] = Future()
    waiter = Background(f.result, 5.0)
    spins = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.2:
        spins += 1
    assert spins > 1000 and not waiter.done.is_set()
    f.set_result(1)
    assert waiter.join() == 1


def test_done_callbacks_in_order_once_and_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    f: Future[int] = Future()
    calls: list[tuple[str, object]] = []

    def bad(fut: cf.Future[int]) -> None:
        raise RuntimeError("callback failed")

    f.add_done_callback(lambda fut: calls.append(("a", fut)))
    f.add_done_callback(bad)
    f.add_done_callback(lambda fut: calls.append(("b", fut)))
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        f.set_result(1)
    assert calls == [("a", f), ("b", f)]
    assert "exception calling callback" in caplog.text and "callback failed" in caplog.text
    f.add_done_callback(lambda fut: calls.append(("late", fut)))  # already done: runs now
    assert calls[-1] == ("late", f)
    with pytest.raises(TypeError):
        f.add_done_callback(3)  # type: ignore[arg-type]


def test_callbacks_run_on_cancel() -> None:
    f: Future[int] = Future()
    seen: list[bool] = []
    f.add_done_callback(lambda fut: seen.append(fut.cancelled()))
    assert f.cancel()
    assert seen == [True]


def test_stdlib_wait_and_as_completed_mix_gilfree_and_standard_futures() -> None:
    with gilfree.ThreadPool(2) as pool, cf.ThreadPoolExecutor(2) as tpe:
        fs: list[cf.Future[float]] = []
        for i in range(6):
            fs.append(pool.submit(time.sleep, 0.01 * i) if i % 2 else tpe.submit(time.sleep, 0.01 * i))
        done, not_done = cf.wait(fs, timeout=5)
        assert len(done) == 6 and not not_done
        slow: Future[None] = pool.submit(time.sleep, 0.3)
        quick = tpe.submit(lambda: 1)
        done, not_done = cf.wait([slow, quick], return_when=cf.FIRST_COMPLETED, timeout=5)
        assert quick in done and slow in not_done
        order = list(cf.as_completed([slow, pool.submit(lambda: 2), tpe.submit(lambda: 3)], timeout=5))
        assert order[-1] is slow
        assert gilfree.wait([slow]).done == {slow}
        assert list(gilfree.as_completed([slow])) == [slow]


def test_stdlib_wait_sees_exceptions_and_cancellations() -> None:
    f: Future[int] = Future()
    g: Future[int] = Future()
    waiter = Background(lambda: cf.wait([f, g], return_when=cf.FIRST_EXCEPTION, timeout=5))
    time.sleep(0.05)
    f.set_exception(ValueError())
    done, _ = waiter.join()
    assert done == {f}
    h: Future[int] = Future()
    waiter = Background(lambda: cf.wait([h], timeout=5))
    time.sleep(0.05)
    h.cancel()
    h.set_running_or_notify_cancel()
    done, _ = waiter.join()
    assert done == {h}


def test_await_in_asyncio() -> None:
    async def main() -> int:
        f: Future[int] = Future()
        threading.Timer(0.05, f.set_result, args=(7,)).start()
        return await f

    assert asyncio.run(main()) == 7


def test_cancelling_the_awaiting_task_cancels_a_pending_future() -> None:
    f: Future[int] = Future()

    async def main() -> None:
        task = asyncio.ensure_future(asyncio.wrap_future(f))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    wait_until(f.cancelled)


def test_wrap_future_and_run_in_executor() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        with gilfree.ThreadPool(2) as pool:
            a = await loop.run_in_executor(pool, abs, -3)
            b = await asyncio.wrap_future(pool.submit(abs, -4))
            c = await pool.submit(abs, -5)
        return [a, b, c]

    assert asyncio.run(main()) == [3, 4, 5]


def test_then_chains_and_flattens() -> None:
    f: Future[int] = Future()
    chained = f.then(lambda v: v + 1).then(lambda v: v * 10)
    inner: Future[str] = Future()
    flat = f.then(lambda v: inner)
    f.set_result(1)
    assert chained.result(timeout=5) == 20
    assert not flat.done()
    inner.set_result("inner")
    assert flat.result(timeout=5) == "inner"


def test_then_errors_pass_down_and_on_error_handles() -> None:
    f: Future[int] = Future()
    passed = f.then(lambda v: v + 1).then(lambda v: v * 2)
    handled = f.then(lambda v: v, on_error=lambda e: f"handled {type(e).__name__}")
    f.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        passed.result(timeout=5)
    assert handled.result(timeout=5) == "handled KeyError"
    g: Future[int] = Future()
    raising = g.then(lambda v: 1 / 0)
    g.set_result(1)
    with pytest.raises(ZeroDivisionError):
        raising.result(timeout=5)
    c: Future[int] = Future()
    after_cancel = c.then(lambda v: v)
    c.cancel()
    assert after_cancel.cancelled()


def test_then_runs_on_the_pool_the_future_came_from() -> None:
    with gilfree.ThreadPool(2, thread_name_prefix="thenpool") as pool:
        f = pool.submit(lambda: 1)
        where = f.then(lambda v: threading.current_thread().name).result(timeout=5)
    assert where != threading.main_thread().name
    standalone: Future[int] = Future()
    inline = standalone.then(lambda v: threading.get_ident())
    standalone.set_result(0)
    assert inline.result() == threading.get_ident()  # standalone: inline, in the completing thread


def test_gather() -> None:
    fs: list[Future[int]] = [Future() for _ in range(3)]
    g = gilfree.gather(*fs)
    for i, f in reversed(list(enumerate(fs))):
        f.set_result(i)
    assert g.result(timeout=5) == [0, 1, 2]
    assert gilfree.gather().result() == []
    bad: list[Future[int]] = [Future() for _ in range(3)]
    gb = gilfree.gather(*bad)
    bad[1].set_exception(ValueError("first error"))
    with pytest.raises(ValueError, match="first error"):
        gb.result(timeout=5)
    assert bad[0].cancelled() and bad[2].cancelled()  # fail fast: the rest are cancelled
    with pytest.raises(TypeError):
        gilfree.gather(1)  # type: ignore[arg-type]


def test_first() -> None:
    fs: list[Future[str]] = [Future() for _ in range(3)]
    f1 = gilfree.first(*fs)
    fs[2].set_result("c")
    fs[0].set_result("a")
    assert f1.result(timeout=5) == "c"
    es: list[Future[str]] = [Future(), Future()]
    f2 = gilfree.first(*es)
    es[1].set_exception(OSError("x"))
    with pytest.raises(OSError):
        f2.result(timeout=5)
    cs: list[Future[str]] = [Future(), Future()]
    f3 = gilfree.first(*cs)
    for c in cs:
        c.cancel()
    assert f3.cancelled()
    with pytest.raises(ValueError):
        gilfree.first()


def test_future_refcounts_and_gc() -> None:
    import gc
    import weakref

    class Payload:
        pass

    p = Payload()
    base = sys.getrefcount(p)
    f: Future[Payload] = Future()
    f.set_result(p)
    assert f.result() is p
    del f
    assert sys.getrefcount(p) == base
    g: Future[object] = Future()
    g.add_done_callback(lambda fut, g=g: None)  # a cycle through a pending callback
    ref = weakref.ref(g)
    del g
    gc.collect()
    assert ref() is None


def test_ctrl_c_during_result() -> None:
    import signal
    import subprocess
    import textwrap

    child = textwrap.dedent(
        """
        import time, gilfree
        f = gilfree.Future()
        print("ready", flush=True)
        try:
            f.result()
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
        """
    )
    interrupt_child(child)


def test_long_then_chains_on_a_pool_and_standalone() -> None:
    with gilfree.ThreadPool(2) as pool:
        f = pool.submit(lambda: 0)
        for _ in range(2000):
            f = f.then(lambda v: v + 1)
        assert f.result(timeout=30) == 2000
        assert f._pool is pool
    g: Future[int] = Future()
    h: Future[int] = g
    for _ in range(5000):  # completes inline, iteratively (no RecursionError)
        h = h.then(lambda v: v + 1)
    g.set_result(0)
    assert h.result(timeout=5) == 5000


def test_stdlib_wait_and_as_completed_with_futures_finishing_meanwhile() -> None:
    """concurrent.futures.wait() reads each future's state twice while it holds their conditions (which
    are done, and how many to wait for); a future finishing in between must count once: never a finished
    future left in not_done, never a wait that returns early or hangs."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # with the GIL, switch threads as often as possible
    try:
        for _ in range(scaled(300, 30)):
            fs: list[gilfree.Future[int]] = [gilfree.Future() for _ in range(40)]
            start = threading.Event()

            def finish() -> None:
                start.wait()
                for i, f in enumerate(fs):
                    f.set_result(i)

            t = threading.Thread(target=finish)
            t.start()
            start.set()
            done, not_done = cf.wait(fs, timeout=30)
            assert not not_done and len(done) == 40
            t.join()
            fs2: list[gilfree.Future[int]] = [gilfree.Future() for _ in range(40)]
            t = threading.Thread(target=lambda: [f.set_result(1) for f in fs2])
            t.start()
            assert len(list(cf.as_completed(fs2, timeout=30))) == 40
            t.join()
    finally:
        sys.setswitchinterval(old)
