"""Timer channels: gilfree.after(seconds) and gilfree.tick(interval).

One shared daemon thread keeps a heap of deadlines (time.monotonic) and, when one is due, delivers into the
timer's channel with send_nowait: a reader that is not there yet finds the value buffered (capacity 1), and
a tick that a slow reader missed is dropped, as in Go. The thread is stopped by an exit hook that runs
before interpreter finalization (threading._register_atexit, as concurrent.futures does); a forked child
starts a fresh one when it first needs it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import threading
import time
from typing import Callable, Optional

from . import _core
from ._channel import Channel

__all__ = ["after", "tick", "Ticker"]


# A delay longer than this (about 31 years, beyond any wait the OS takes) means "never": nothing is scheduled.
_NEVER = 1e9
# A tick interval shorter than this cannot make progress on a float clock that has been up for years.
_MIN_INTERVAL = 1e-6


class _Timer:
    """One scheduled delivery: cancel() withdraws it (and frees what it holds) at once."""

    __slots__ = ("target", "interval", "_owner")

    def __init__(self, owner: _TimerThread, target: Channel[float] | Callable[[], object] | None,
                 interval: float) -> None:
        self._owner = owner
        self.target = target
        self.interval = interval

    def cancel(self) -> None:
        self._owner._cancel(self)


class _TimerThread:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        # (due, seq, timer); a cancelled timer has target None and is dropped lazily (see _cancel)
        self._heap: list[tuple[float, int, _Timer]] = []
        self._cancelled = 0
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    def call_later(self, delay: float, fn: Callable[[], object]) -> _Timer:
        """Run fn() on the timer thread after delay seconds (it must be quick)."""
        return self.schedule(fn, delay, 0.0)

    def schedule(self, ch: Channel[float] | Callable[[], object], delay: float, interval: float) -> _Timer:
        timer = _Timer(self, ch, interval)
        if not delay < _NEVER:  # inf, or too far to represent as a wait: never (Go: a timer that never fires)
            timer.target = None
            return timer
        with self._cond:
            if self._stopping:
                raise RuntimeError("cannot schedule a timer after interpreter shutdown")
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gilfree-timer", daemon=True)
                self._thread.start()
                threading._register_atexit(self.stop)  # type: ignore[attr-defined]
            self._cond.notify()
        return timer

    def _cancel(self, timer: _Timer) -> None:
        with self._cond:
            if timer.target is None:
                return
            timer.target = None  # what it held is released now
            self._cancelled += 1
            # Compact once most of the heap is cancelled: memory follows the live timers, O(1) amortised.
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2].target is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _after_fork_in_child(self) -> None:
        # The timer thread does not exist in a forked child: start afresh (pending timers are dropped).
        self._cond = threading.Condition()
        self._heap = []  # same type as in __init__
        self._cancelled = 0
        self._thread = None
        self._stopping = False

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except BaseException:  # noqa: BLE001 - the timer thread serves every timer: it must survive
                import traceback

                traceback.print_exc()

    def _step(self) -> bool:
        """Deliver the next due timer; True once stopping."""
        with self._cond:
            while not self._stopping and (not self._heap or self._heap[0][0] > time.monotonic()):
                timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                self._cond.wait(None if timeout is None else min(timeout, threading.TIMEOUT_MAX))
            if self._stopping:
                return True
            due, _, timer = heapq.heappop(self._heap)
            target, interval = timer.target, timer.interval
            if target is None:
                self._cancelled = max(0, self._cancelled - 1)
                return False
            if not isinstance(target, Channel):
                timer.target = None  # a one-shot callable: done
            elif interval > 0 and not target.closed:
                now = time.monotonic()
                nxt = due + interval
                if nxt <= now:  # missed ticks are dropped, the phase is kept
                    nxt += math.ceil((now - nxt) / interval) * interval
                    if nxt <= now:
                        nxt += interval
                heapq.heappush(self._heap, (nxt, next(self._seq), timer))
        if not isinstance(target, Channel):
            try:
                target()
            except Exception:  # noqa: BLE001 - a timer callback must not kill the timer thread
                import traceback

                traceback.print_exc()
            return False
        try:
            target.send_nowait(time.monotonic())
        except (_core.WouldBlock, _core.ChannelClosed):
            pass  # a slow reader misses this tick; a stopped ticker gets nothing
        return False


_timers = _TimerThread()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_timers._after_fork_in_child)


def _check_seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return seconds


def after(seconds: float) -> Channel[float]:
    """A channel that receives time.monotonic() once, ``seconds`` from now (Go's time.After).

    The channel stays open after that one value, as in Go, so a select can keep naming it. A delay too long
    to wait for (over about 31 years, inf) never delivers.
    """
    delay = _check_seconds(seconds, "seconds")
    ch: Channel[float] = Channel(1)
    _timers.schedule(ch, delay, 0.0)
    return ch


class Ticker(Channel[float]):
    """A channel that receives time.monotonic() every ``interval`` seconds until stop().

    Capacity 1: ticks a slow reader misses are dropped. stop() closes it, so ``for t in ticker`` ends, and
    withdraws its timer at once.
    """

    __slots__ = ("_timer",)
    __module__ = "gilfree"
    _timer: _Timer

    def stop(self) -> None:
        """Stop ticking (idempotent): the ticker is closed (``for t in ticker`` ends once a pending tick is
        read) and its timer withdrawn at once."""
        self.close()
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()


def tick(interval: float) -> Ticker:
    """A Ticker delivering every ``interval`` seconds (Go's time.Tick / NewTicker). An interval too long to
    wait for (over about 31 years, inf) never ticks."""
    period = _check_seconds(interval, "interval")
    if not period >= _MIN_INTERVAL:
        raise ValueError(f"interval must be at least {_MIN_INTERVAL} seconds, got {interval!r}")
    t = Ticker(1)
    t._timer = _timers.schedule(t, period, period)
    return t
