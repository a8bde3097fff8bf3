"""gilfree.ThreadPool: the executor contract (ideas of CPython's test_concurrent_futures: executor,
thread pool, shutdown), backpressure, streaming map, exit, fork, contextvars, stats."""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import Background, interrupt_child, scaled, wait_until

import gilfree
from gilfree import ThreadPool


def test_is_an_executor_with_native_workers() -> None:
    with ThreadPool(3) as pool:
        assert isinstance(pool, cf.Executor)
        assert pool.max_workers == 3 and pool.queue_size == 0
        names = {pool.submit(lambda: threading.current_thread().name).result(timeout=5) for _ in range(20)}
        assert threading.main_thread().name not in names
        assert 1 <= pool.stats()["workers"] <= 3


def test_default_worker_count_is_threadpoolexecutors() -> None:
    cpus = os.process_cpu_count() if hasattr(os, "process_cpu_count") else len(os.sched_getaffinity(0))
    with ThreadPool() as pool:
        assert pool.max_workers == min(32, cpus + 4) == cf.ThreadPoolExecutor()._max_workers
        assert pool.stats()["workers"] == 0  # they start on demand
    assert gilfree._parallel.default_pool().max_workers == cpus  # the native kernels' pool: one per CPU


@pytest.mark.parametrize("kwargs,exc", [({"max_workers": 0}, ValueError), ({"max_workers": -1}, ValueError),
                                        ({"max_workers": "2"}, TypeError), ({"max_workers": 1.5}, TypeError),
                                        ({"queue_size": -1}, ValueError), ({"queue_size": 1.0}, TypeError),
                                        ({"thread_name_prefix": 3}, TypeError), ({"initializer": 3}, TypeError),
                                        ({"initargs": 3}, TypeError)])
def test_bad_arguments(kwargs: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        ThreadPool(**kwargs)  # type: ignore[arg-type]


def test_submit_args_kwargs_and_exceptions() -> None:
    with ThreadPool(2) as pool:
        assert pool.submit(pow, 2, 8).result(timeout=5) == 256
        assert pool.submit(int, "ff", base=16).result(timeout=5) == 255
        assert pool.submit(lambda *, fn: fn, fn=1).result(timeout=5) == 1  # a kwarg named fn
        f = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            f.result(timeout=5)
        assert isinstance(f.exception(), ZeroDivisionError)
        with pytest.raises(TypeError):
            pool.submit(3)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            pool.submit()  # type: ignore[call-arg]


def test_base_exceptions_are_captured() -> None:
    def exit_() -> None:
        raise SystemExit(3)

    with ThreadPool(1) as pool:
        f = pool.submit(exit_)
        assert isinstance(f.exception(timeout=5), SystemExit)
        assert pool.submit(lambda: "still works").result(timeout=5) == "still works"


def test_submit_after_shutdown_raises() -> None:
    pool = ThreadPool(1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(print)
    pool.shutdown()  # idempotent


def test_shutdown_waits_for_running_and_queued_tasks() -> None:
    pool = ThreadPool(2)
    fs = [pool.submit(time.sleep, 0.05) for _ in range(6)]
    pool.shutdown(wait=True)
    assert all(f.done() and not f.cancelled() for f in fs)
    assert pool.stats()["workers"] == 0


def test_shutdown_cancel_futures() -> None:
    pool = ThreadPool(1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 5)
    wait_until(running.running)
    queued = [pool.submit(lambda: None) for _ in range(5)]
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    gate.set()
    assert running.result(timeout=5) is True
    pool.shutdown(wait=True)
    stats = pool.stats()
    assert stats["cancelled"] == 5 and stats["completed"] == 1


def test_shutdown_without_wait_returns_at_once() -> None:
    pool = ThreadPool(1)
    gate = threading.Event()
    f = pool.submit(gate.wait, 5)
    t0 = time.monotonic()
    pool.shutdown(wait=False)
    assert time.monotonic() - t0 < 0.5
    gate.set()
    assert f.result(timeout=5)


def test_shutdown_wait_from_a_task_raises_like_threadpoolexecutor() -> None:
    pool = ThreadPool(2)
    f = pool.submit(lambda: pool.shutdown(wait=True))
    with pytest.raises(RuntimeError, match="cannot join current thread"):
        f.result(timeout=10)
    with pytest.raises(RuntimeError, match="shutdown"):  # it was shut down all the same
        pool.submit(lambda: None)
    g = ThreadPool(2)
    assert g.submit(lambda: g.shutdown(wait=False)).result(timeout=10) is None


def test_two_tasks_shutting_their_pool_down_do_not_hang_exit() -> None:
    code = ("import gilfree\n"
            "pool = gilfree.ThreadPool(2)\n"
            "fs = [pool.submit(pool.shutdown, wait=True) for _ in range(2)]\n"
            "print(sorted(type(f.exception(timeout=10)).__name__ for f in fs))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "RuntimeError" in out.stdout


def test_with_statement_shuts_down() -> None:
    with ThreadPool(2) as pool:
        f = pool.submit(time.sleep, 0.05)
    assert f.done()
    with pytest.raises(RuntimeError):
        pool.submit(print)


def test_dropped_pool_finishes_its_queue() -> None:
    import gc

    results: list[int] = []
    pool = ThreadPool(1)
    for i in range(20):
        pool.submit(results.append, i)
    del pool
    gc.collect()
    wait_until(lambda: len(results) == 20)
    assert results == list(range(20))


# ---- backpressure --------------------------------------------------------------------------------------


def test_submit_blocks_exactly_at_queue_size() -> None:
    gate = threading.Event()
    with ThreadPool(1, queue_size=2) as pool:
        pool.submit(gate.wait, 10)
        wait_until(lambda: pool.stats()["running"] == 1)
        pool.submit(lambda: 1)
        pool.submit(lambda: 2)  # two waiting to start: the queue is full, but this did not block
        assert pool.stats()["queued"] == 2
        blocked = Background(pool.submit, lambda: 3)
        time.sleep(0.1)
        assert not blocked.done.is_set(), "submit did not block on a full queue"
        gate.set()
        assert blocked.join().result(timeout=5) == 3


def test_blocked_submit_released_by_shutdown() -> None:
    gate = threading.Event()
    pool = ThreadPool(1, queue_size=1)
    pool.submit(gate.wait, 10)
    wait_until(lambda: pool.stats()["running"] == 1)
    pool.submit(lambda: None)
    blocked = Background(pool.submit, lambda: None)
    time.sleep(0.05)
    pool.shutdown(wait=False)
    with pytest.raises(RuntimeError):
        blocked.join()
    gate.set()
    pool.shutdown()


def _child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60)


def test_ctrl_c_during_blocked_submit() -> None:
    child = textwrap.dedent(
        """
        import threading, time, gilfree
        gate = threading.Event()
        pool = gilfree.ThreadPool(1, queue_size=1)
        pool.submit(gate.wait)
        while pool.stats()["running"] == 0:
            time.sleep(0.001)
        pool.submit(lambda: None)
        print("ready", flush=True)
        try:
            pool.submit(lambda: None)
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), pool.stats()["queued"], flush=True)
        gate.set()
        pool.shutdown()
        """
    )
    rest = interrupt_child(child)
    assert rest[0] == "1"  # the interrupted submit queued nothing


# ---- map -----------------------------------------------------------------------------------------------


def test_map_like_the_standard_library() -> None:
    with ThreadPool(3) as pool:
        assert list(pool.map(abs, range(-50, 0))) == list(range(50, 0, -1))
        assert list(pool.map(pow, range(10), itertools.repeat(2))) == [i * i for i in range(10)]
        assert list(pool.map(abs, [])) == []
        assert list(pool.map(abs, range(-20, 0), chunksize=7)) == list(range(20, 0, -1))


def test_map_unordered_yields_in_completion_order() -> None:
    def nap(t: float) -> float:
        time.sleep(t)
        return t

    with ThreadPool(4) as pool:
        got = list(pool.map(nap, [0.3, 0.0, 0.1, 0.2], ordered=False))
    assert sorted(got) == [0.0, 0.1, 0.2, 0.3] and got[-1] == 0.3


def test_map_ordered_under_random_durations() -> None:
    import random

    rng = random.Random(5)
    delays = [rng.random() / 500 for _ in range(200)]

    def work(i: int) -> int:
        time.sleep(delays[i])
        return i

    with ThreadPool(4) as pool:
        assert list(pool.map(work, range(200), buffersize=16)) == list(range(200))
        assert sorted(pool.map(work, range(200), ordered=False)) == list(range(200))


def test_map_exception_at_its_position_and_rest_cancelled() -> None:
    def f(i: int) -> int:
        if i == 5:
            raise ValueError(i)
        time.sleep(0.01)
        return i

    with ThreadPool(2) as pool:
        it = pool.map(f, range(100), buffersize=10)
        got = []
        with pytest.raises(ValueError):
            for v in it:
                got.append(v)
        assert got == [0, 1, 2, 3, 4]
        wait_until(lambda: pool.stats()["queued"] == 0 and pool.stats()["running"] == 0)
        stats = pool.stats()
        assert stats["submitted"] < 100  # it stopped reading the input
        assert stats["cancelled"] > 0


def test_map_over_an_endless_generator_is_bounded() -> None:
    taken = [0]

    def endless() -> itertools.count[int]:
        for i in itertools.count():
            taken[0] += 1
            yield i  # type: ignore[misc]
        raise AssertionError  # pragma: no cover

    with ThreadPool(2) as pool:
        it = pool.map(abs, endless(), buffersize=8)
        first = [next(it) for _ in range(1000)]
        assert first == list(range(1000))
        assert taken[0] <= 1000 + 8 + 1
        del it  # closing the generator cancels what is in flight
    assert pool.stats()["queued"] == 0


def test_map_timeout() -> None:
    with ThreadPool(1) as pool:
        with pytest.raises(TimeoutError):
            list(pool.map(time.sleep, [0.5, 0.5], timeout=0.1))


def test_map_bad_arguments() -> None:
    with ThreadPool(1) as pool:
        with pytest.raises(TypeError):
            pool.map(3, [1])  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            pool.map(abs, [1], chunksize=0)
        with pytest.raises(ValueError):
            pool.map(abs, [1], buffersize=0)
        with pytest.raises(ValueError):
            pool.map(abs, [1], timeout=-1)


def test_map_stops_when_the_context_ends() -> None:
    ctx = gilfree.Context.background().with_cancel()
    consumed = [0]

    def source() -> itertools.count[int]:
        for i in itertools.count():
            consumed[0] += 1
            yield i  # type: ignore[misc]
        raise AssertionError  # pragma: no cover

    def slow(i: int) -> int:
        time.sleep(0.002)
        return i

    with ThreadPool(2) as pool:
        it = pool.map(slow, source(), ctx=ctx, buffersize=4)
        got = [next(it) for _ in range(10)]
        ctx.cancel()
        with pytest.raises(gilfree.Cancelled):
            for v in it:
                got.append(v)
        read = consumed[0]
        time.sleep(0.05)
        assert consumed[0] == read  # no more input read
        wait_until(lambda: pool.stats()["queued"] == 0)
    assert got[:10] == list(range(10))


# ---- contextvars, initializer, stats -------------------------------------------------------------------

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def test_each_task_runs_in_a_copy_of_the_submitters_context() -> None:
    with ThreadPool(2) as pool:
        request_id.set("abc")
        assert pool.submit(request_id.get).result(timeout=5) == "abc"

        def change() -> str:
            request_id.set("changed in task")
            return request_id.get()

        assert pool.submit(change).result(timeout=5) == "changed in task"
        assert request_id.get() == "abc"  # a copy: the submitter's context is untouched
        request_id.set("second")
        assert pool.submit(request_id.get).result(timeout=5) == "second"


def test_initializer_runs_once_per_worker() -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def init(tag: str) -> None:
        with lock:
            seen.append(tag)

    with ThreadPool(3, initializer=init, initargs=("x",)) as pool:
        gate = threading.Event()
        fs = [pool.submit(gate.wait, 5) for _ in range(3)]  # three at once: three workers start
        wait_until(lambda: len(seen) == 3)
        gate.set()
        assert all(f.result(timeout=5) for f in fs)
        pool.submit(lambda: None).result(timeout=5)
    assert seen == ["x", "x", "x"]


def test_workers_start_on_demand_and_are_reused() -> None:
    """As ThreadPoolExecutor: a task no idle worker can take starts a thread, up to max_workers."""
    with ThreadPool(4) as pool:
        assert pool.stats()["workers"] == 0 and not pool._threads
        for _ in range(50):
            pool.submit(abs, -1).result(timeout=5)
            # (with the GIL off the worker may still be on its way back when result() returns: wait for it)
            wait_until(lambda: pool.stats()["idle"] == pool.stats()["workers"])
        assert pool.stats()["workers"] == 1 and len(pool._threads) == 1
        gate = threading.Event()
        fs = [pool.submit(gate.wait, 5) for _ in range(6)]
        wait_until(lambda: pool.stats()["running"] == 4)
        assert pool.stats()["workers"] == 4 == len(pool._threads)  # never more than max_workers
        gate.set()
        assert all(f.result(timeout=5) for f in fs)


def test_failing_initializer_breaks_the_pool() -> None:
    def bad_init() -> None:
        raise ValueError("init failed")

    pool = ThreadPool(1, initializer=bad_init)
    first = pool.submit(lambda: None)  # starts the worker, whose initializer fails
    with pytest.raises(cf.thread.BrokenThreadPool):
        first.result(timeout=5)
    assert pool._broken
    with pytest.raises(cf.thread.BrokenThreadPool):
        pool.submit(lambda: None)
    pool.shutdown()


def test_stats_counts() -> None:
    with ThreadPool(2) as pool:
        fs = [pool.submit(lambda: None) for _ in range(10)] + [pool.submit(lambda: 1 / 0) for _ in range(3)]
        cf.wait(fs)
        wait_until(lambda: pool.stats()["completed"] + pool.stats()["failed"] == 13)
        s = pool.stats()
    assert s["submitted"] == 13 and s["completed"] == 10 and s["failed"] == 3
    assert s["queued"] == 0 and s["running"] == 0 and s["cancelled"] == 0


def test_many_threads_submitting_at_once() -> None:
    n = scaled(20_000, 1000)
    with ThreadPool(4, queue_size=64) as pool:
        def producer(k: int) -> int:
            return sum(pool.submit(lambda i=i: i).result() for i in range(k * n, (k + 1) * n, 8))

        subs = [Background(producer, k) for k in range(8)]
        total = sum(s.join(120) for s in subs)
    assert total == sum(range(0, 8 * n, 8))


@pytest.mark.nosanitizer
def test_a_million_no_op_tasks_without_memory_growth() -> None:
    def rss_kib() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    def noop() -> None:
        pass

    with ThreadPool(2) as pool:
        for _ in range(5):  # warm up the allocators
            cf.wait([pool.submit(noop) for _ in range(10_000)])
        before = rss_kib()
        for _ in range(100):
            fs = [pool.submit(noop) for _ in range(10_000)]
            fs[-1].result(timeout=60)
            cf.wait(fs)
        del fs
        after = rss_kib()
        assert pool.stats()["completed"] >= 1_000_000
    assert after - before < 20 * 1024, f"RSS grew by {(after - before) // 1024} MiB over a million tasks"


# ---- exit and fork -------------------------------------------------------------------------------------


def test_exit_with_tasks_blocked_in_a_channel_wait() -> None:
    """At interpreter exit the pools shut down before finalization; a task blocked in a channel wait is
    told to give up (gilfree.Cancelled) instead of hanging the exit."""
    out = _child(
        """
        import gilfree
        ch = gilfree.Channel()
        pool = gilfree.ThreadPool(2)
        def blocked():
            try:
                ch.recv()
            except gilfree.Cancelled:
                print("cancelled at exit", flush=True)
                raise
        fs = [pool.submit(blocked) for _ in range(2)]
        queued = pool.submit(print, "queued task ran", flush=True)
        print("exiting", flush=True)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("cancelled at exit") == 2
    assert "exiting" in out.stdout


def test_exit_runs_queued_tasks_first() -> None:
    out = _child(
        """
        import time, gilfree
        pool = gilfree.ThreadPool(1)
        for i in range(3):
            pool.submit(lambda i=i: (time.sleep(0.05), print("task", i, flush=True)))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["task 0", "task 1", "task 2"]


@pytest.mark.nosanitizer  # fork() of a threaded process under a sanitizer runtime can hang in its allocator
def test_fork_with_a_live_pool() -> None:
    out = _child(
        """
        import os, warnings, gilfree
        pool = gilfree.ThreadPool(2)
        assert pool.submit(abs, -1).result() == 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            try:
                pool.submit(abs, -2)
            except RuntimeError as e:
                code = 0 if "fork" in str(e) else 1
            else:
                code = 2
            fresh = gilfree.ThreadPool(1)
            code = code or (0 if fresh.submit(abs, -3).result(timeout=5) == 3 else 3)
            fresh.shutdown()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert pool.submit(abs, -4).result(timeout=5) == 4  # the parent's pool keeps working
        print("ok")
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_each_worker_keeps_one_thread_for_its_life() -> None:
    with ThreadPool(3) as pool:
        idents = {pool.submit(threading.get_ident).result(timeout=5) for _ in range(300)}
        fs = [pool.submit(threading.get_ident) for _ in range(300)]
        idents |= {f.result(timeout=5) for f in fs}
    assert 1 <= len(idents) <= 3 and threading.get_ident() not in idents


def test_task_arguments_are_released_after_the_task() -> None:
    """From CPython's test_free_reference: the executor keeps no reference to a finished task's data."""
    import gc
    import weakref

    class Obj:
        pass

    with ThreadPool(2) as pool:
        for _ in range(20):
            obj = Obj()
            wr = weakref.ref(obj)
            pool.submit(id, obj).result(timeout=5)
            del obj
            gc.collect()
            wait_until(lambda: wr() is None)


def test_wait_and_as_completed_timeouts() -> None:
    gate = threading.Event()
    with ThreadPool(2) as pool:
        slow = pool.submit(gate.wait, 10)
        quick = pool.submit(lambda: 1)
        done, not_done = cf.wait([slow, quick], timeout=0.1)
        assert done == {quick} and not_done == {slow}
        with pytest.raises(TimeoutError):
            for _ in cf.as_completed([slow, quick], timeout=0.1):
                pass
        gate.set()


def test_cancel_pending_future_then_it_never_runs() -> None:
    ran: list[int] = []
    gate = threading.Event()
    with ThreadPool(1) as pool:
        blocker = pool.submit(gate.wait, 10)
        wait_until(blocker.running)
        f = pool.submit(ran.append, 1)
        assert f.cancel() and f.cancelled()
        gate.set()
    assert ran == [] and pool.stats()["cancelled"] == 1


def test_stats_queued_is_right_after_cancel_futures_with_free_workers() -> None:
    """shutdown(cancel_futures=True) keeps as many queued tasks as there are free workers; with fewer queued
    than that, `queued` was set to the number of free workers, and stayed wrong for ever."""
    for _ in range(scaled(20, minimum=20)):
        pool = ThreadPool(4)
        list(pool.map(time.sleep, [0.01] * 4))  # four workers, idle now
        time.sleep(0.005)
        fut = pool.submit(time.sleep, 0)  # queued, its worker only just woken
        pool.shutdown(wait=True, cancel_futures=True)
        assert fut.done()
        stats = pool.stats()
        assert stats["queued"] == 0 and stats["running"] == 0, stats
        assert stats["completed"] + stats["cancelled"] == 5, stats
