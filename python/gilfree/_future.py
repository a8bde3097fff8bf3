"""gilfree.Future: a concurrent.futures.Future whose state lives in C.

``isinstance(f, concurrent.futures.Future)`` is true and the whole public API is the standard library's
(result/exception with timeout, done/running/cancelled/cancel, add_done_callback, set_result/set_exception,
set_running_or_notify_cancel), so ``gilfree.Future()`` also serves as a promise. Waiting releases the GIL
and Ctrl-C reaches a wait on the main thread. The standard library's ``wait`` and ``as_completed`` read a
future's ``_condition``, ``_state`` and ``_waiters``: those are provided here, created only when such a
caller first asks, so ordinary futures never pay for a Condition.

Extras: ``await f`` in asyncio, ``f.then(fn, on_error=None)``, and ``gather``/``first``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import concurrent.futures._base as _cf_base
import concurrent.futures.thread as _cf_thread
import functools
import logging
import threading
from typing import Any, Callable, Generator, Iterable, Iterator, TypeVar

from . import _core

T = TypeVar("T")
U = TypeVar("U")

__all__ = ["Future", "as_completed", "first", "gather", "wait"]

_LOGGER = logging.getLogger("concurrent.futures")
_compat_lock = threading.Lock()
_C_STATE = _core.Future.__dict__["_state"]  # the C getset: the state right now
_DONE_STATES = ("CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED")
_NOTIFIED_STATE = {"result": "FINISHED", "exception": "FINISHED", "cancel": "CANCELLED",
                   "cancelled_notified": "CANCELLED_AND_NOTIFIED"}
_STATE_RANK = {"PENDING": 0, "RUNNING": 1, "CANCELLED": 2, "CANCELLED_AND_NOTIFIED": 3, "FINISHED": 3}


def _log_callback_error(what: str, obj: Any, exc: BaseException) -> None:
    # As concurrent.futures logs them: a failing initializer at CRITICAL, a failing callback at ERROR.
    level = logging.CRITICAL if what.startswith("Exception in initializer") else logging.ERROR
    _LOGGER.log(level, what, obj, exc_info=exc)


class Future(_core.Future[T], cf.Future[T]):
    """The result of work that may not have finished yet (a concurrent.futures.Future)."""

    __module__ = "gilfree"

    def __init__(self) -> None:  # the C base did everything; cf.Future's Condition is not needed
        pass

    # --- what concurrent.futures.wait / as_completed read ---------------------------------------------

    def _compat(self) -> tuple[threading.Condition, list[Any]]:
        d = self.__dict__
        pair = d.get("_gf_compat")
        if pair is None:
            with _compat_lock:
                pair = d.get("_gf_compat")
                if pair is None:
                    condition = threading.Condition()
                    pair = (condition, [])
                    with condition:  # a _cf_notify for a later change waits for the snapshot below
                        d["_gf_compat"] = pair
                        # from now on, changes call _cf_notify; the state at this moment:
                        d["_gf_cf_state"] = self._enable_compat()
        return pair

    @property
    def _state(self) -> str:  # type: ignore[override]
        """The state as concurrent.futures' wait()/as_completed() read it under ``_condition``: once they
        use it, a change to a finished state shows only when ``_cf_notify`` runs, under that condition, as
        with the standard library's futures (whose state only changes under their condition). So the two
        looks wait() takes while holding the conditions agree, and no completion is counted twice or
        missed."""
        state: str = _C_STATE.__get__(self, type(self))
        if state in _DONE_STATES:
            return self.__dict__.get("_gf_cf_state", state)  # type: ignore[no-any-return]
        return state

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        return self._compat()[0]

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        return self._compat()[1]

    def _cf_notify(self, kind: str) -> None:
        """Called by C after a state change, once _condition/_waiters exist (as concurrent.futures does)."""
        condition, waiters = self._compat()
        with condition:
            new, d = _NOTIFIED_STATE[kind], self.__dict__
            if _STATE_RANK[new] > _STATE_RANK[d.get("_gf_cf_state", "PENDING")]:  # notifications may cross
                d["_gf_cf_state"] = new
            for waiter in waiters:
                if kind == "result":
                    waiter.add_result(self)
                elif kind == "exception":
                    waiter.add_exception(self)
                elif kind == "cancelled_notified":
                    waiter.add_cancelled(self)
            condition.notify_all()

    # --- extras ------------------------------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, T]:
        """``await f`` in asyncio, without blocking the loop; cancelling the awaiting task cancels a still
        pending future."""
        return asyncio.wrap_future(self).__await__()

    def then(self, fn: Callable[[T], Any], on_error: Callable[[BaseException], Any] | None = None
             ) -> Future[Any]:
        """A future of ``fn(result)`` (or ``on_error(exception)``), run on this future's pool (inline for a
        standalone future). A Future that fn returns is flattened. An exception with no handler, and a
        cancellation, pass down the chain."""
        nxt: Future[Any] = Future()
        pool = self._pool
        nxt._pool = pool  # the chain goes on on the same pool

        def settle_from(src: cf.Future[Any]) -> None:
            if src.cancelled():
                nxt.cancel()
            elif (exc := src.exception()) is not None:
                _set_exception_once(nxt, exc)
            else:
                _set_result_once(nxt, src.result())

        def step() -> None:
            try:
                exc = self.exception()
                if exc is None:
                    value = fn(self.result())
                elif on_error is not None:
                    value = on_error(exc)
                else:
                    _set_exception_once(nxt, exc)
                    return
            except BaseException as e:  # noqa: BLE001 - handed down the chain
                _set_exception_once(nxt, e)
                return
            if isinstance(value, cf.Future):
                value.add_done_callback(settle_from)
            else:
                _set_result_once(nxt, value)

        def on_done(_: cf.Future[Any]) -> None:
            if self.cancelled():
                nxt.cancel()
                return
            if pool is not None:
                try:
                    pool.submit(step)
                    return
                except RuntimeError:  # the pool shut down meanwhile: continue here
                    pass
            _run_inline(step)

        self.add_done_callback(on_done)
        return nxt


_inline = threading.local()


def _run_inline(step: Callable[[], None]) -> None:
    """Run a continuation in this thread. A long chain of inline continuations completes each other
    from inside their callbacks; a trampoline keeps that iterative instead of recursing."""
    queue: list[Callable[[], None]] | None = getattr(_inline, "queue", None)
    if queue is not None:
        queue.append(step)
        return
    _inline.queue = queue = [step]
    try:
        while queue:
            queue.pop(0)()
    finally:
        _inline.queue = None


def _set_result_once(f: cf.Future[Any], value: Any) -> None:
    try:
        f.set_result(value)
    except cf.InvalidStateError:
        pass  # cancelled meanwhile


def _set_exception_once(f: cf.Future[Any], exc: BaseException) -> None:
    try:
        f.set_exception(exc)
    except cf.InvalidStateError:
        pass


_core._configure_futures(Future, cf.InvalidStateError, cf.CancelledError,
                         _cf_thread.BrokenThreadPool, _log_callback_error)


def gather(*fs: cf.Future[Any]) -> Future[list[Any]]:
    """A future of the list of results, in order; fails fast with the first exception (or cancellation),
    cancelling the futures still pending."""
    out: Future[list[Any]] = Future()
    n = len(fs)
    if n == 0:
        out.set_result([])
        return out
    results: list[Any] = [None] * n
    remaining = [n]
    lock = threading.Lock()

    def fail(exc: BaseException | None) -> None:
        if exc is None:
            if not out.cancel():
                return
        else:
            _set_exception_once(out, exc)
        for f in fs:
            f.cancel()

    def on_done(i: int, f: cf.Future[Any]) -> None:
        if f.cancelled():
            fail(None)
            return
        exc = f.exception()
        if exc is not None:
            fail(exc)
            return
        results[i] = f.result()
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            _set_result_once(out, results)

    for i, f in enumerate(fs):
        if not isinstance(f, cf.Future):
            raise TypeError(f"gather() argument {i} must be a future, not {type(f).__name__}")
    for i, f in enumerate(fs):
        f.add_done_callback(functools.partial(on_done, i))
    return out


def first(*fs: cf.Future[Any]) -> Future[Any]:
    """A future settled like the first of ``fs`` to finish (its result or its exception)."""
    if not fs:
        raise ValueError("first() needs at least one future")
    for i, f in enumerate(fs):
        if not isinstance(f, cf.Future):
            raise TypeError(f"first() argument {i} must be a future, not {type(f).__name__}")
    out: Future[Any] = Future()
    cancelled = [0]
    lock = threading.Lock()

    def on_done(f: cf.Future[Any]) -> None:
        if f.cancelled():
            with lock:
                cancelled[0] += 1
                all_cancelled = cancelled[0] == len(fs)
            if all_cancelled:
                out.cancel()
            return  # another may still finish
        exc = f.exception()
        if exc is not None:
            _set_exception_once(out, exc)
        else:
            _set_result_once(out, f.result())

    for f in fs:
        f.add_done_callback(on_done)
    return out


def wait(fs: Iterable[cf.Future[Any]], timeout: float | None = None,
         return_when: str = cf.ALL_COMPLETED) -> cf._base.DoneAndNotDoneFutures[Any]:
    """concurrent.futures.wait, for gilfree and standard futures alike."""
    return cf.wait(fs, timeout=timeout, return_when=return_when)


def as_completed(fs: Iterable[cf.Future[Any]], timeout: float | None = None) -> Iterator[cf.Future[Any]]:
    """concurrent.futures.as_completed, for gilfree and standard futures alike."""
    return cf.as_completed(fs, timeout=timeout)


del _cf_base
