"""gilfree.ThreadPool: a concurrent.futures.Executor whose workers are native threads (see src/pool.c).

submit() is C all the way down. map() submits every item at once, as the standard executors do; with
``buffersize=N`` it is lazy and streaming instead: it reads the inputs as it goes and keeps at most N chunks
in flight, so an endless generator works in bounded memory.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, ParamSpec, TypeVar

from . import _core
from ._channel import Channel
from ._future import Future

_INLINE_MAX_S = 0.0005  # map: an inline run longer than this (a tenth of the GIL's switch interval) stops them
_INLINE_RETRY = 64      # ... for this many items, then it measures again

T = TypeVar("T")
P = ParamSpec("P")

__all__ = ["ThreadPool"]

_live_pools: weakref.WeakSet[ThreadPool] = weakref.WeakSet()
_live_lock = threading.Lock()
_exit_hook_installed = False


def _shutdown_all_at_exit() -> None:
    """Runs before interpreter finalization (threading._register_atexit): no worker may still need the
    interpreter after it. Waits inside the workers (channels, futures) give up with gilfree.Cancelled; the
    queued tasks still run, as with ThreadPoolExecutor."""
    _core._stop_kernels()  # running parallel_for jobs hand out no more chunks; running ones stop soon
    with _live_lock:
        pools = list(_live_pools)
    for pool in pools:
        pool._interrupt_waits()
    for pool in pools:
        try:
            pool.shutdown(wait=True)
        except BaseException:  # noqa: BLE001 - one pool's failure must not leave the others running
            import traceback

            traceback.print_exc()


if hasattr(os, "register_at_fork"):
    # The forking thread is the child's main thread now: its waits must see Ctrl-C.
    os.register_at_fork(after_in_child=_core._after_fork_child)


class _StreamingMap:
    """map() for the pools: eager, or lazy and streaming with buffersize; ordered or not, chunked, with a
    Context. A pool provides submit(), max_workers and _inline_runner() (a function that runs a not-yet-started future's task in the
    calling thread, or None)."""

    if TYPE_CHECKING:
        @property
        def max_workers(self) -> int: ...

        def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> cf.Future[T]: ...

    def _inline_runner(self) -> Callable[[cf.Future[Any]], object] | None:
        return None

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, ordered: bool = True, buffersize: int | None = None,
            ctx: Any = None) -> Iterator[T]:
        """Executor.map. As the standard executors do, every item is submitted when map() is called, so the
        results are there even after the pool is shut down (``with pool: it = pool.map(...)``, then
        ``list(it)`` after the block). With ``buffersize=N`` (Python 3.14's parameter) it is lazy instead:
        at most N chunks are in flight, and the input is read as results are consumed (an endless input
        works; memory stays bounded). ``ordered=False`` yields in completion order. A task's exception is raised at its
        position and the pending tasks are cancelled. ThreadPool, in order: when the next result's task has
        not started yet, the consuming thread runs it itself instead of waiting for a worker (with the GIL
        that saves two hand-offs per item; the workers keep running the rest); not with a timeout. With ``ctx`` (a gilfree.Context), reading the input
        stops and pending tasks are cancelled when the context ends; the iterator then raises ctx.err()."""
        if not callable(fn):
            raise TypeError(f"map() argument 'fn' must be callable, not {type(fn).__name__}")
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError("chunksize must be an int")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if buffersize is None:
            buffersize = sys.maxsize  # eager: every item submitted now
        if isinstance(buffersize, bool) or not isinstance(buffersize, int):
            raise TypeError("buffersize must be an int or None")
        if buffersize < 1:
            raise ValueError("buffersize must be >= 1")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError("timeout must be a number or None")
            if not timeout >= 0:
                raise ValueError("timeout must be non-negative")
        if ctx is not None:
            from ._context import Context

            if not isinstance(ctx, Context):
                raise TypeError(f"ctx must be a gilfree.Context or None, not {type(ctx).__name__}")
        end_time = None if timeout is None else time.monotonic() + timeout
        inputs = zip(*iterables)
        if chunksize == 1:
            submit_next = self._submitter_one(fn, inputs)
        else:
            submit_next = self._submitter_chunks(fn, inputs, chunksize)
        if ordered:
            return self._map_ordered(submit_next, buffersize, end_time, chunksize > 1, ctx)
        return self._map_unordered(submit_next, buffersize, end_time, chunksize > 1, ctx)

    def _submitter_one(self, fn: Callable[..., Any], inputs: Iterator[tuple[Any, ...]]
                       ) -> Callable[[], cf.Future[Any] | None]:
        submit = self.submit

        def submit_next() -> cf.Future[Any] | None:
            for args in inputs:
                return submit(fn, *args)
            return None
        return submit_next

    def _submitter_chunks(self, fn: Callable[..., Any], inputs: Iterator[tuple[Any, ...]], chunksize: int
                          ) -> Callable[[], cf.Future[Any] | None]:
        submit = self.submit

        def submit_next() -> cf.Future[Any] | None:
            chunk = list(itertools.islice(inputs, chunksize))
            return submit(_run_chunk, fn, chunk) if chunk else None
        return submit_next

    @staticmethod
    def _fill(pending: collections.deque[cf.Future[Any]], submit_next: Callable[[], cf.Future[Any] | None],
              buffersize: int, ctx: Any, on_submit: Callable[[cf.Future[Any]], None] | None = None) -> bool:
        """Top the window up; False once the input is exhausted (or the context ended)."""
        while len(pending) < buffersize:
            if ctx is not None and ctx.err() is not None:
                return False
            f = submit_next()
            if f is None:
                return False
            pending.append(f)
            if on_submit is not None:
                on_submit(f)
        return True

    def _map_ordered(self, submit_next: Callable[[], cf.Future[Any] | None], buffersize: int,
                     end_time: float | None, chunked: bool, ctx: Any) -> Iterator[Any]:
        pending: collections.deque[cf.Future[Any]] = collections.deque()
        more = self._fill(pending, submit_next, buffersize, ctx)
        cancel_hook = _on_context_end(ctx, pending)

        run_inline = self._inline_runner()
        # Running a task inline saves two GIL hand-offs per item, which is most of the cost of a tiny task.
        # But on a GIL build the consuming thread then competes for the GIL like one more worker, which
        # makes every other Python thread wait longer for it (the convoy). So it runs inline only while the
        # tasks are short: once one inline run takes longer than _INLINE_MAX_S it stops, and tries again
        # after _INLINE_RETRY items. Without the GIL there is no convoy: it always may.
        from ._parallel import gil_enabled

        free_threaded = not gil_enabled()
        inline_skip = 0

        def results() -> Iterator[Any]:
            nonlocal more, inline_skip
            box: list[Any] = []  # hands each value to `yield` without a local keeping it alive meanwhile
            try:
                while pending:
                    f = pending.popleft()
                    if inline_skip:
                        inline_skip -= 1
                    elif run_inline is not None and end_time is None and not f.done():
                        t0 = time.perf_counter()
                        run_inline(f)  # not started yet: run it here rather than wait for a worker
                        if not free_threaded and time.perf_counter() - t0 > _INLINE_MAX_S:
                            inline_skip = _INLINE_RETRY
                    try:
                        box.append(f.result(None if end_time is None else max(0.0, end_time - time.monotonic())))
                    except BaseException as e:
                        f.cancel()  # timed out (or interrupted): it must not start later
                        if isinstance(e, cf.CancelledError) and ctx is not None and ctx.err() is not None:
                            raise ctx.err() from None
                        raise
                    del f  # the iterator keeps no reference to a result once it is yielded
                    if more:
                        more = self._fill(pending, submit_next, buffersize, ctx)
                    if chunked:
                        yield from _drain(box)
                    else:
                        yield box.pop()
                if ctx is not None and ctx.err() is not None:
                    raise ctx.err()
            finally:
                for f in pending:
                    f.cancel()
                if cancel_hook is not None:
                    cancel_hook()
        return results()

    def _map_unordered(self, submit_next: Callable[[], cf.Future[Any] | None], buffersize: int,
                       end_time: float | None, chunked: bool, ctx: Any) -> Iterator[Any]:
        done: Channel[cf.Future[Any]] = Channel(None)
        pending: collections.deque[cf.Future[Any]] = collections.deque()
        in_flight: set[cf.Future[Any]] = set()

        def on_submit(f: cf.Future[Any]) -> None:
            in_flight.add(f)
            f.add_done_callback(done.send_nowait)

        more = self._fill(pending, submit_next, buffersize, ctx, on_submit)
        pending.clear()
        cancel_hook = _on_context_end(ctx, in_flight)

        def results() -> Iterator[Any]:
            nonlocal more
            try:
                while in_flight:
                    try:
                        f = done.recv(None if end_time is None else max(0.0, end_time - time.monotonic()))
                    except TimeoutError:
                        raise TimeoutError("map() did not produce a result in time") from None
                    in_flight.discard(f)
                    box = [_result(f, ctx)]
                    del f
                    if more:
                        room = buffersize - len(in_flight)
                        more = self._fill(pending, submit_next, room, ctx, on_submit)
                        pending.clear()
                    if chunked:
                        yield from _drain(box)
                    else:
                        yield box.pop()
                if ctx is not None and ctx.err() is not None:
                    raise ctx.err()
            finally:
                for f in list(in_flight):
                    f.cancel()
                if cancel_hook is not None:
                    cancel_hook()
        return results()



class _WorkerThread:
    """What ThreadPoolExecutor._threads holds, for code written against it: a worker's name, and join(),
    which returns once the pool's workers have all ended (so this one has)."""

    __slots__ = ("_pool", "name")

    def __init__(self, pool: ThreadPool, name: str) -> None:
        self._pool = weakref.ref(pool)
        self.name = name

    def join(self, timeout: float | None = None) -> None:
        pool = self._pool()
        if pool is not None:
            pool._join_workers(timeout)

    def is_alive(self) -> bool:
        pool = self._pool()
        return pool is not None and pool.stats()["workers"] > 0

    def __repr__(self) -> str:
        return f"<gilfree worker {self.name!r}>"


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in chunk]


class ThreadPool(_core.Pool, _StreamingMap, cf.Executor):
    """Native worker threads (up to max_workers, started on demand); a drop-in concurrent.futures.Executor.

    ``ThreadPool(max_workers=None, *, queue_size=0, thread_name_prefix="gilfree", initializer=None,
    initargs=())``. Default workers: min(32, CPUs + 4), as ThreadPoolExecutor; they start on demand.
    """

    __module__ = "gilfree"

    def __init__(self, max_workers: int | None = None, *, queue_size: int = 0,
                 thread_name_prefix: str = "gilfree", initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        global _exit_hook_installed
        with _live_lock:
            _live_pools.add(self)
            if not _exit_hook_installed:
                threading._register_atexit(_shutdown_all_at_exit)  # type: ignore[attr-defined]
                _exit_hook_installed = True
        self._prefix = thread_name_prefix

    if TYPE_CHECKING:
        # At run time submit is the C method of _core.Pool; this is its type.
        def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]: ...

    @property
    def _threads(self) -> set[_WorkerThread]:
        """ThreadPoolExecutor's view: the worker threads started so far (they start on demand)."""
        return {_WorkerThread(self, f"{self._prefix}_{i}") for i in range(self._started)}

    @property
    def _max_workers(self) -> int:
        """ThreadPoolExecutor's name for max_workers (read-only)."""
        return self.max_workers

    def _inline_runner(self) -> Callable[[cf.Future[Any]], object] | None:
        return self._run_inline

    def __repr__(self) -> str:
        return f"<gilfree.ThreadPool max_workers={self.max_workers} queue_size={self.queue_size}>"

def _drain(box: list[list[Any]]) -> Iterator[Any]:
    """Yield a chunk's results, keeping no reference to those already yielded."""
    chunk = box.pop()
    chunk.reverse()
    while chunk:
        yield chunk.pop()


def _result(f: cf.Future[Any], ctx: Any, timeout: float | None = None) -> Any:
    """f's result; a future cancelled because ctx ended raises ctx.err() instead of CancelledError."""
    try:
        return f.result(timeout)
    except cf.CancelledError:
        if ctx is not None and ctx.err() is not None:
            raise ctx.err() from None
        raise


def _on_context_end(ctx: Any, futures: Any) -> Callable[[], None] | None:
    """Cancel the futures still pending when ctx ends; returns the hook's remover."""
    if ctx is None:
        return None

    def cancel_all() -> None:
        for f in list(futures):
            f.cancel()
    return ctx._on_cancel(cancel_all)  # type: ignore[no-any-return]


__all__ += []
_ = Future  # the pool creates gilfree.Future objects (configured in _future)
