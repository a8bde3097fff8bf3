"""gilfree.ProcessPool: a concurrent.futures.Executor whose workers are processes, fed by ProcessChannels."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import ctypes
import faulthandler
import itertools
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Iterator

import pytest
from conftest import SANITIZER, interrupt_child, scaled

import gilfree
from gilfree import BrokenProcessPool, ProcessPool

pytestmark = [pytest.mark.skipif(bool(SANITIZER), reason="worker processes under a sanitizer"),
              pytest.mark.usefixtures("dev_shm_clean")]


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---- what the workers run (module level: they pickle by name) ------------------------------------------------

def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def pid_of(_: object = None) -> int:
    return os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def fail(message: str) -> None:
    raise ValueError(message)


def die(how: str) -> None:
    if how == "exit":
        os._exit(3)
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        faulthandler.disable()  # the crash is the test: keep the inherited PYTHONFAULTHANDLER's dump out of the log
        ctypes.string_at(0)


def returns_unpicklable() -> Any:
    return threading.Lock()


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("no pickling for this one")


def raises_unpicklable() -> None:
    raise Unpicklable("x")


def length(data: bytes) -> int:
    return len(data)


def make_bytes(n: int) -> bytes:
    return b"y" * n


_STATE: dict[str, Any] = {}


def remember(*args: Any) -> None:
    _STATE["init"] = args


def recall() -> Any:
    return _STATE.get("init")


def init_fails() -> None:
    raise RuntimeError("cannot start")


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def value(self) -> int:
        return self.n


# ---- the Executor contract ----------------------------------------------------------------------------------

def test_is_an_executor_with_gilfree_futures() -> None:
    with ProcessPool(2) as pool:
        assert isinstance(pool, cf.Executor)
        f = pool.submit(add, 1, 2, c=3)
        assert isinstance(f, gilfree.Future) and isinstance(f, cf.Future)
        assert f.result(30) == 6
        assert pool.submit(pid_of).result(30) != os.getpid()
        fs = [pool.submit(square, i) for i in range(50)]
        done, not_done = cf.wait(fs, timeout=30)
        assert not not_done and sorted(f.result() for f in done) == sorted(i * i for i in range(50))
        assert sorted(f.result() for f in cf.as_completed(fs, timeout=30)) == sorted(i * i for i in range(50))
        assert gilfree.gather(*fs).result(30) == [i * i for i in range(50)]

        async def main() -> int:
            return await asyncio.wrap_future(pool.submit(square, 9)) + await pool.submit(square, 2)

        assert asyncio.run(main()) == 85
    assert "ProcessPool" in repr(pool) and "shut down" in repr(pool)


def test_exceptions_carry_the_worker_traceback() -> None:
    with ProcessPool(1) as pool:
        f = pool.submit(fail, "boom")
        with pytest.raises(ValueError, match="boom") as info:
            f.result(30)
        assert "fail" in str(info.value.__cause__) and "raise ValueError" in str(info.value.__cause__)
        assert isinstance(f.exception(), ValueError)
        # a failed task does not hurt the worker
        assert pool.submit(square, 3).result(30) == 9


def test_what_does_not_pickle_fails_its_future() -> None:
    with ProcessPool(1) as pool:
        with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
            pool.submit(add, threading.Lock()).result(30)  # the argument
        with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
            pool.submit(lambda: 1).result(30)  # the function
        with pytest.raises((pickle.PicklingError, TypeError)):
            pool.submit(returns_unpicklable).result(30)  # the result
        with pytest.raises(RuntimeError, match="Unpicklable.*could not be pickled"):
            pool.submit(raises_unpicklable).result(30)  # the exception
        assert pool.submit(square, 4).result(30) == 16


def test_a_bound_method_is_pickled_at_each_submit() -> None:
    """Functions are pickled once per pool; a bound method is not cached (its object may have changed)."""
    c = Counter()
    with ProcessPool(1) as pool:
        assert pool.submit(c.value).result(30) == 0
        c.n = 5
        assert pool.submit(c.value).result(30) == 5


def test_large_arguments_and_results_travel_outside_the_ring() -> None:
    big = os.urandom(3 << 20)
    with ProcessPool(2) as pool:
        assert pool.submit(length, big).result(60) == len(big)
        assert pool.submit(make_bytes, 5 << 20).result(60) == b"y" * (5 << 20)
        assert list(pool.map(length, [big[:n] for n in (10, 300_000, 2 << 20)])) == [10, 300_000, 2 << 20]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_every_start_method(method: str) -> None:
    with ProcessPool(2, mp_context=mp.get_context(method)) as pool:
        assert method in repr(pool)
        assert list(pool.map(square, range(20))) == [i * i for i in range(20)]
        assert len({pid for pid in pool.map(pid_of, range(40))} - {os.getpid()}) >= 1
        assert all(p.is_alive() for p in pool._processes.values())


def test_initializer_runs_in_each_worker() -> None:
    with ProcessPool(2, initializer=remember, initargs=(1, "two")) as pool:
        assert set(pool.map(lambda_free_recall, range(8))) == {(1, "two")}


def lambda_free_recall(_: object) -> Any:
    return recall()


def test_a_failing_initializer_breaks_the_pool() -> None:
    pool = ProcessPool(1, initializer=init_fails)
    f = pool.submit(square, 2)
    with pytest.raises(BrokenProcessPool, match="initializer raised RuntimeError: cannot start"):
        f.result(30)
    with pytest.raises(BrokenProcessPool):
        pool.submit(square, 2)
    pool.shutdown()


# ---- map ---------------------------------------------------------------------------------------------------

def test_map_is_ordered_chunked_and_lazy() -> None:
    with ProcessPool(2) as pool:
        assert list(pool.map(add, range(100), range(100))) == [2 * i for i in range(100)]
        assert list(pool.map(square, range(101), chunksize=7)) == [i * i for i in range(101)]
        # ordered even when later tasks finish first
        delays = [0.2, 0.0, 0.1, 0.0]
        assert list(pool.map(sleep_then, delays, range(4))) == [0, 1, 2, 3]
        # lazy: an endless input, bounded read-ahead
        read = itertools.count()
        it = pool.map(square, read, buffersize=8)
        assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
        assert next(read) <= 5 + 8 + 1
        it.close()
        assert sorted(pool.map(square, range(30), ordered=False)) == [i * i for i in range(30)]


def test_map_raises_at_the_failing_position_and_times_out() -> None:
    with ProcessPool(2) as pool:
        it = pool.map(fail_on_three, range(10))
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="three"):
            next(it)
        with pytest.raises(TimeoutError):
            list(pool.map(sleep_then, [5.0], timeout=0.2))


def fail_on_three(i: int) -> int:
    if i == 3:
        raise ValueError("three")
    return i


# ---- shutdown, cancel, exit ----------------------------------------------------------------------------------

def test_workers_start_on_demand_up_to_max_workers() -> None:
    """One worker for one task at a time; more while tasks outnumber them, never more than max_workers (so
    a huge max_workers starts only what the work needs)."""
    with ProcessPool(10**12) as pool:
        for i in range(5):
            assert pool.submit(square, i).result(30) == i * i
        assert len(pool._processes) == 1
        fs = [pool.submit(sleep_then, 0.3, i) for i in range(3)]
        assert [f.result(30) for f in fs] == [0, 1, 2]
        assert 2 <= len(pool._processes) <= 4
    with ProcessPool(2) as pool:
        list(pool.map(sleep_then, [0.05] * 20))
        assert len(pool._processes) == 2


def test_shutdown_waits_and_then_refuses() -> None:
    pool = ProcessPool(2)
    fs = [pool.submit(sleep_then, 0.05, i) for i in range(6)]
    procs = list(pool._processes.values())
    pool.shutdown(wait=True)
    assert [f.result(0) for f in fs] == list(range(6))
    assert all(not p.is_alive() for p in procs)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(square, 1)
    pool.shutdown()  # idempotent
    ProcessPool(3).shutdown()  # never started


def test_workers_that_leave_at_shutdown_are_not_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle worker leaves as soon as shutdown closes the task channel, while another still runs a task:
    no process is started to replace it (at interpreter exit none could be, on 3.12)."""
    from gilfree._procpool import _State

    pool = ProcessPool(2)
    f = pool.submit(sleep_then, 0.3, "kept")
    started: list[int] = []
    spawn = _State.spawn
    monkeypatch.setattr(_State, "spawn", lambda self: (started.append(1), spawn(self))[1])
    pool.shutdown(wait=True)
    assert f.result(0) == "kept"
    assert started == []


def test_shutdown_without_wait_still_finishes_the_work() -> None:
    pool = ProcessPool(1)
    f = pool.submit(sleep_then, 0.2, "late")
    t0 = time.monotonic()
    pool.shutdown(wait=False)
    assert time.monotonic() - t0 < 0.15
    assert f.result(30) == "late"


def test_cancel_futures_cancels_what_no_worker_has() -> None:
    pool = ProcessPool(1)
    first = pool.submit(sleep_then, 0.3, "first")
    time.sleep(0.1)
    fs = [pool.submit(sleep_then, 0.01, i) for i in range(400)]
    waiting = fs[-1]
    assert waiting.cancel()  # beyond what the task channel holds: still cancellable
    pool.shutdown(wait=True, cancel_futures=True)
    assert first.result(0) == "first"
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) >= 400 - 70  # those handed to the worker's channel (at most 64) still ran
    assert all(f.done() for f in fs)
    assert all(f.result(0) == i for i, f in enumerate(fs) if not f.cancelled())


def test_exit_without_shutdown_finishes_the_work_and_leaves_no_process() -> None:
    child = textwrap.dedent(
        """
        import os, sys, time, gilfree
        sys.path.insert(0, %r)
        from test_procpool import sleep_then
        pool = gilfree.ProcessPool(2)
        f = pool.submit(sleep_then, 0.3, "done")
        print(" ".join(str(p) for p in pool._processes), flush=True)
        f.add_done_callback(lambda f: print("result", f.result(), flush=True))
        """ % os.path.dirname(__file__)
    )
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1] == "result done"
    assert time.monotonic() - t0 < 30
    for pid in map(int, lines[0].split()):
        assert not running(pid)


def test_workers_leave_when_the_parent_is_killed() -> None:
    child = textwrap.dedent(
        """
        import os, sys, gilfree
        sys.path.insert(0, %r)
        from test_procpool import sleep_then
        pool = gilfree.ProcessPool(2)
        assert [f.result() for f in [pool.submit(sleep_then, 0.3, i) for i in range(2)]] == [0, 1]
        print(" ".join(str(p) for p in pool._processes), flush=True)
        sys.stdin.read()
        """ % os.path.dirname(__file__)
    )
    with subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if running(p)]
        time.sleep(0.05)
    assert not alive, "workers outlived their killed parent"


def hang_at_exit() -> None:
    threading._register_atexit(time.sleep, 3600)  # type: ignore[attr-defined]


def test_a_collected_pool_shuts_down() -> None:
    import gc

    # Should a worker not end, its Python stacks go to stderr (the forked worker inherits this handler).
    faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    try:
        pool = ProcessPool(1)
        f = pool.submit(sleep_then, 0.1, 7)
        procs = list(pool._processes.values())
        state = pool._s
        del pool
        gc.collect()
        assert f.result(30) == 7
        for p in procs:
            # Not p.join(): the pool's manager thread reaps its workers, and a join racing it can return at
            # once with exitcode None (multiprocessing's poll() takes waitpid's ECHILD for "not yet").
            deadline = time.monotonic() + 30
            while p.exitcode is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if p.exitcode is None:
                try:
                    os.kill(p.pid, signal.SIGUSR1)
                    time.sleep(1)
                except ProcessLookupError:
                    pass
            assert p.exitcode == 0, (state.shutting_down, state.said_bye, threading.enumerate())
    finally:
        faulthandler.unregister(signal.SIGUSR1)


def test_a_worker_whose_exit_hangs_after_its_last_task_is_killed() -> None:
    # A worker's exit can hang (an exit hook inherited through fork, waiting on a lock that another thread of
    # the parent held at the fork): a shutdown still ends, after the grace period, with every result in.
    child = textwrap.dedent(
        """
        import sys, threading, time
        sys.path.insert(0, %r)
        from gilfree import _procpool
        from test_procpool import hang_at_exit, sleep_then
        _procpool._EXIT_GRACE_S = 0.5
        pool = _procpool.ProcessPool(2, initializer=hang_at_exit)
        fs = [pool.submit(sleep_then, 0.05, i) for i in range(6)]
        procs = list(pool._processes.values())
        t0 = time.monotonic()
        pool.shutdown(wait=True)
        took = time.monotonic() - t0
        assert [f.result() for f in fs] == list(range(6))
        assert all(p.exitcode == -9 for p in procs), [p.exitcode for p in procs]
        print("took", round(took, 2), flush=True)
        """ % os.path.dirname(__file__)
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    took = float(out.stdout.split()[1])
    assert 0.4 < took < 20, took
    assert "had not exited" in out.stderr


def test_ctrl_c_reaches_a_main_thread_waiting_on_a_result() -> None:
    child = textwrap.dedent(
        """
        import sys, time, gilfree
        sys.path.insert(0, %r)
        from test_procpool import sleep_then
        pool = gilfree.ProcessPool(1)
        f = pool.submit(sleep_then, 2.0)
        print("ready", flush=True)
        try:
            f.result()
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
        pool.shutdown(cancel_futures=True)
        """ % os.path.dirname(__file__)
    )
    interrupt_child(child, new_session=True)


# ---- a worker that dies -------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["exit", "kill", "segfault"])
def test_a_dying_worker_breaks_the_pool_and_nothing_hangs(how: str) -> None:
    pool = ProcessPool(2)
    slow = [pool.submit(sleep_then, 0.5, i) for i in range(4)]
    queued = [pool.submit(square, i) for i in range(200)]
    doomed = pool.submit(die, how)
    for f in [doomed, *slow, *queued]:
        try:
            f.result(30)
        except BrokenProcessPool as e:
            assert "terminated abruptly" in str(e)
    with pytest.raises(BrokenProcessPool):
        doomed.result(0)
    assert all(f.done() for f in [*slow, *queued])
    with pytest.raises(BrokenProcessPool):
        pool.submit(square, 1)
    assert "broken" in repr(pool)
    pool.shutdown(wait=True)
    assert pool._processes == {}


def test_killing_a_worker_from_outside() -> None:
    pool = ProcessPool(2)
    f = pool.submit(sleep_then, 10.0)
    time.sleep(0.3)
    os.kill(next(iter(pool._processes)), signal.SIGKILL)
    with pytest.raises(BrokenProcessPool):
        f.result(30)
    pool.shutdown()


# ---- max_tasks_per_child ------------------------------------------------------------------------------------

def test_max_tasks_per_child_replaces_workers() -> None:
    with ProcessPool(1, max_tasks_per_child=3) as pool:
        assert pool._mp_context.get_start_method() == "spawn"
        pids = [pool.submit(pid_of).result(60) for _ in range(9)]
    assert len(set(pids)) == 3
    assert pids == sorted(pids, key=pids.index) and all(pids.count(p) == 3 for p in set(pids))


def test_max_tasks_per_child_with_queued_work_at_shutdown() -> None:
    pool = ProcessPool(2, mp_context=mp.get_context("forkserver"), max_tasks_per_child=2)
    fs = [pool.submit(square, i) for i in range(20)]
    pool.shutdown(wait=True)
    assert [f.result(0) for f in fs] == [i * i for i in range(20)]


# ---- many threads submitting --------------------------------------------------------------------------------

def test_many_threads_submit_concurrently() -> None:
    n = scaled(2000, 200)
    with ProcessPool(2) as pool:
        results: list[list[int]] = [[] for _ in range(8)]

        def go(k: int) -> None:
            fs = [pool.submit(add, k * n, i) for i in range(n)]
            results[k] = [f.result(60) for f in fs]

        threads = [threading.Thread(target=go, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for k in range(8):
            assert results[k] == [k * n + i for i in range(n)]


# ---- bad arguments --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"max_workers": 0}, ValueError, "max_workers"),
        ({"max_workers": -1}, ValueError, "max_workers"),
        ({"max_workers": "2"}, TypeError, "max_workers"),
        ({"max_workers": True}, TypeError, "max_workers"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child"),
        ({"max_tasks_per_child": 1.5}, TypeError, "max_tasks_per_child"),
        ({"max_tasks_per_child": 2, "mp_context": mp.get_context("fork")}, ValueError, "fork"),
        ({"mp_context": "spawn"}, TypeError, "mp_context"),
        ({"initializer": 3}, TypeError, "initializer"),
        ({"initializer": remember, "initargs": [1]}, TypeError, "initargs"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], exc: type[BaseException], match: str) -> None:
    with pytest.raises(exc, match=match):
        ProcessPool(**kwargs)


def test_bad_call_arguments() -> None:
    with ProcessPool(1) as pool:
        with pytest.raises(TypeError, match="fn"):
            pool.submit(3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="chunksize"):
            pool.map(square, [1], chunksize=0)
        with pytest.raises(TypeError, match="fn"):
            pool.map(3, [1])  # type: ignore[arg-type]
    assert ProcessPool().max_workers == (getattr(os, "process_cpu_count", os.cpu_count)() or 1)
