"""gilfree.ProcessPool as a drop-in for ProcessPoolExecutor that never loses work: large callables, forked
children, workers that cannot start, exceptions that neither pickle nor print, nested processes, memory with
distinct callables, map after `with`, lost initializer logs, a half-started pool, a zombie owner."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import logging.handlers
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from conftest import SANITIZER

import gilfree
from gilfree import BrokenProcessPool, ProcessPool, ThreadPool

pytestmark = [pytest.mark.skipif(bool(SANITIZER), reason="worker processes under a sanitizer"),
              pytest.mark.usefixtures("dev_shm_clean")]

FORK = mp.get_context("fork")
SPAWN = mp.get_context("spawn")


def square(x: int) -> int:
    return x * x


def size_plus(data: bytes, k: int) -> int:
    return len(data) + k


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def max_rss_kib(_: object = None) -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Model:
    def __init__(self, n: int) -> None:
        self.weights = bytes(n)

    def predict(self, x: int) -> int:
        return len(self.weights) + x


def run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


# ---- 1. large callables --------------------------------------------------------------------------------------

@pytest.mark.parametrize("busy", [False, True])
def test_large_callables_run_like_large_arguments(busy: bool) -> None:
    big = bytes(3 << 20)
    with ProcessPool(2, mp_context=FORK) as pool:
        filler = [pool.submit(pid_after, 0.05) for _ in range(20)] if busy else []
        part = pool.submit(functools.partial(size_plus, big), 1)
        method = pool.submit(Model(2 << 20).predict, 2)
        assert part.result(60) == len(big) + 1
        assert method.result(60) == (2 << 20) + 2
        for f in filler:
            f.result(60)
        assert pool.submit(square, 3).result(60) == 9  # the pool is whole


# ---- 2. a forked child -------------------------------------------------------------------------------------

def test_a_forked_child_cannot_use_its_parents_pool_and_the_parent_is_untouched() -> None:
    with ProcessPool(2, mp_context=FORK) as pool:
        assert pool.submit(square, 2).result(60) == 4
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: a clear error, and nothing sent to the parent's workers
            code = 1
            try:
                try:
                    pool.submit(square, 5)
                except RuntimeError as e:
                    code = 0 if "forked child" in str(e) else 2
            finally:
                os.write(w, bytes([code]))
                os._exit(code)
        os.close(w)
        futs = [pool.submit(square, i) for i in range(40)]
        assert [f.result(60) for f in futs] == [i * i for i in range(40)]
        assert os.read(r, 1) == b"\x00"
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


# ---- 3. the first worker cannot start ------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["lambda initializer under spawn", "pool inside a pool task"])
def test_a_worker_that_cannot_start_raises_from_submit_and_breaks_the_pool(how: str) -> None:
    r = run_child(
        f"""
        import multiprocessing as mp, sys
        from gilfree import ProcessPool, BrokenProcessPool

        def nested():
            with ProcessPool(1, mp_context=mp.get_context("spawn"), initializer=lambda: None) as inner:
                try:
                    inner.submit(abs, -1)
                    return "no error"
                except Exception as e:
                    return "raised " + type(e).__name__

        if __name__ == "__main__":
            how = {how!r}
            if how == "lambda initializer under spawn":
                pool = ProcessPool(1, mp_context=mp.get_context("spawn"), initializer=lambda: None)
                try:
                    pool.submit(abs, -1)
                    print("no error")
                except Exception as e:
                    print("raised", type(e).__name__)
                try:
                    pool.submit(abs, -1)
                except BrokenProcessPool as e:
                    print("broken", "could not start" in str(e))
                pool.shutdown()
                print("shut down")
            else:
                with ProcessPool(1, mp_context=mp.get_context("fork")) as pool:
                    print(pool.submit(nested).result(60))
                    print("broken True")
                    print("shut down")
        """
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0].startswith("raised ") and lines[1:3] == ["broken True", "shut down"], r.stdout + r.stderr


# ---- 4. no exception escapes the pool's threads ---------------------------------------------------------------

def test_workers_dying_together_break_the_pool_without_a_thread_exception() -> None:
    seen: list[Any] = []
    old = threading.excepthook
    threading.excepthook = lambda args: seen.append((args.thread.name if args.thread else None, args.exc_value))
    try:
        for _ in range(5):
            pool = ProcessPool(4, mp_context=FORK)
            dying = [pool.submit(os._exit, 1) for _ in range(4)]
            others = []
            for _ in range(4):
                try:  # the workers may already have died: then submit refuses, as ProcessPoolExecutor's does
                    others.append(pool.submit(pid_after, 0.3))
                except BrokenProcessPool:
                    break
            for f in dying:
                with pytest.raises(BrokenProcessPool):
                    f.result(60)
            for f in others:  # broken with the pool (or, on a very loaded machine, finished before it broke)
                assert isinstance(f.exception(60), (BrokenProcessPool, type(None)))
            with pytest.raises(BrokenProcessPool):
                pool.submit(pid_after, 0)
            pool.shutdown()
    finally:
        threading.excepthook = old
    assert [e for e in seen if e[0] == "gilfree-processpool-manager"] == [], seen


# ---- 5. non-daemonic workers ---------------------------------------------------------------------------------

def start_a_process() -> int:
    p = mp.get_context("fork").Process(target=os._exit, args=(7,))
    p.start()
    p.join()
    return p.exitcode or 0


def use_an_executor() -> int:
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as ex:
        return ex.submit(square, 6).result()


def use_a_gilfree_pool() -> int:
    with ProcessPool(1, mp_context=mp.get_context("fork")) as inner:
        return inner.submit(square, 7).result(60)


def test_tasks_may_start_processes_and_pools() -> None:
    with ProcessPool(1, mp_context=FORK) as pool:
        assert pool.submit(start_a_process).result(60) == 7
        assert pool.submit(use_an_executor).result(60) == 36
        assert pool.submit(use_a_gilfree_pool).result(60) == 49


# ---- 6. exceptions that neither pickle nor print --------------------------------------------------------------

class Hostile(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("not picklable")

    def __str__(self) -> str:
        raise ValueError("no str either")


def raise_hostile() -> None:
    raise Hostile()


def test_an_exception_that_neither_pickles_nor_prints_fails_only_its_future() -> None:
    with ProcessPool(1, mp_context=FORK) as pool:
        f = pool.submit(raise_hostile)
        with pytest.raises(RuntimeError, match="Hostile"):
            f.result(60)
        assert pool.submit(square, 4).result(60) == 16  # same worker, still there


# ---- 7. parallelism after shutdown is requested ----------------------------------------------------------------

def test_the_pool_keeps_growing_while_tasks_wait_after_shutdown() -> None:
    with ProcessPool(4, mp_context=FORK) as pool:
        futs = [pool.submit(pid_after, 0.5) for _ in range(8)]
    assert len({f.result() for f in futs}) == 4  # every worker served, not one or two


# ---- 8. memory with distinct callables --------------------------------------------------------------------------

@pytest.mark.nosanitizer
def test_distinct_callables_are_not_kept_by_the_workers() -> None:
    with ProcessPool(1, mp_context=FORK) as pool:
        base = pool.submit(max_rss_kib).result(60)
        for i in range(60):
            pool.submit(functools.partial(size_plus, bytes([i]) * 900_000), i).result(60)
        grown = pool.submit(max_rss_kib).result(60) - base
    assert grown < 30_000, f"the worker grew by {grown} KiB"  # it kept ~100 MiB of callables before


# ---- 9. map after `with` ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ThreadPool", "ProcessPool"])
def test_map_results_are_there_after_the_with_block(kind: str) -> None:
    pool = ThreadPool(2) if kind == "ThreadPool" else ProcessPool(2, mp_context=FORK)
    with pool:
        it = pool.map(square, range(200))
        chunked = pool.map(square, range(50), chunksize=7)
    assert list(it) == [i * i for i in range(200)]
    assert list(chunked) == [i * i for i in range(50)]
    with pytest.raises(RuntimeError):
        pool.map(square, range(3))
    # laziness is opt-in: buffersize bounds what is read ahead
    with (ThreadPool(2) if kind == "ThreadPool" else ProcessPool(2, mp_context=FORK)) as pool2:
        read: list[int] = []

        def source() -> Any:
            for i in range(10**9):
                read.append(i)
                yield i

        lazy = pool2.map(square, source(), buffersize=4)
        assert [next(lazy) for _ in range(3)] == [0, 1, 4]
        assert len(read) <= 3 + 4 + 1
        lazy.close()  # type: ignore[attr-defined]


# ---- issue: initializer logs, half-started pool, zombie owner ---------------------------------------------

def init_logs_then_fails(q: Any) -> None:
    logger = logging.getLogger("gilfree-test-init")
    logger.addHandler(logging.handlers.QueueHandler(q))
    logger.warning("the initializer ran")
    raise RuntimeError("init failed")


@pytest.mark.parametrize("ctx", [FORK, SPAWN], ids=["fork", "spawn"])
def test_a_failing_initializer_gets_its_logs_out(ctx: Any) -> None:
    lost = 0
    for _ in range(5):
        q = ctx.Queue()
        pool = ProcessPool(1, mp_context=ctx, initializer=init_logs_then_fails, initargs=(q,))
        f = pool.submit(square, 1)
        with pytest.raises(BrokenProcessPool, match="init failed"):
            f.result(60)
        pool.shutdown()
        try:
            record = q.get(timeout=5)
            assert record.getMessage() == "the initializer ran"
        except Exception:  # noqa: BLE001
            lost += 1
        q.close()
        q.join_thread()
    assert lost == 0


def test_a_manager_thread_that_cannot_start_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == "gilfree-processpool-manager":
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    pool = ProcessPool(2, mp_context=FORK)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        pool.submit(square, 2)
    assert mp.active_children() == []  # no worker left
    pool.shutdown()  # a no-op, no error
    with pytest.raises(BrokenProcessPool, match="could not start"):
        pool.submit(square, 2)


def test_workers_leave_when_the_owner_exits_even_as_a_zombie() -> None:
    """A program that exits without shutting its forkserver pool down, run by a parent that reads its output
    to EOF before reaping it: the workers (holding that output) must notice the exit although the owner is
    a zombie until then."""
    code = """
        import multiprocessing as mp, os
        from gilfree import ProcessPool
        if __name__ == "__main__":
            pool = ProcessPool(2, mp_context=mp.get_context("forkserver"))
            print(pool.submit(abs, -5).result(60), flush=True)
            os._exit(0)   # no shutdown, no exit hooks
        """
    t0 = time.monotonic()
    r = run_child(code, timeout=60)  # reads stdout to EOF, then reaps: hung for ever before
    assert r.stdout.strip() == "5"
    assert time.monotonic() - t0 < 30


# ---- cancellation of tasks that wait in the workers' channel --------------------------------------------------

def test_shutdown_cancel_futures_cancels_what_no_worker_took() -> None:
    """CPython's test_shutdown.test_cancel_futures: with few workers, most of 50 queued tasks are cancelled
    (it cancelled none: they sat in the workers' channel and counted as running), and quickly."""
    for ctx in (FORK, SPAWN):
        pool = ProcessPool(2, mp_context=ctx)
        pool.submit(square, 1).result(60)  # started
        fs = [pool.submit(time.sleep, 0.1) for _ in range(50)]
        t0 = time.monotonic()
        pool.shutdown(cancel_futures=True)
        cancelled = [f for f in fs if f.cancelled()]
        assert len(cancelled) > 20, len(cancelled)
        assert all(f.done() for f in fs)
        assert time.monotonic() - t0 < 3  # not 50 x 0.1 s / 2 workers


def record_and_sleep(ch: gilfree.ProcessChannel[int], i: int, seconds: float) -> int:
    ch.send(i)
    time.sleep(seconds)
    return i


def test_a_cancelled_task_never_runs_and_every_other_does() -> None:
    """Random cancels race the workers taking tasks from the channel: cancel() == True means the task never
    ran; every task not cancelled ran exactly once and completed."""
    ran: gilfree.ProcessChannel[int] = gilfree.ProcessChannel(4096)
    try:
        with ProcessPool(2, mp_context=FORK) as pool:
            fs = [pool.submit(record_and_sleep, ran, i, 0.002) for i in range(600)]
            said: dict[int, bool] = {}
            for i in range(0, 600, 3):
                said[i] = fs[i].cancel()
                if i % 30 == 0:
                    time.sleep(0.01)
            results = {}
            for i, f in enumerate(fs):
                if f.cancelled():
                    assert said.get(i) is True
                else:
                    results[i] = f.result(60)
        got = []
        while len(ran):
            got.append(ran.recv())
        assert sorted(got) == sorted(results)  # ran <=> not cancelled, each once
        assert all(results[i] == i for i in results)
        assert sum(said.values()) > 0 and not all(said.values())  # both outcomes happened
    finally:
        ran.release()
