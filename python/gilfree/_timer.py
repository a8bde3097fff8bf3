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


class _TimerThread:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        # (due, seq, channel or callable, interval)
        self._heap: list[tuple[float, int, Channel[float] | Callable[[], object], float]] = []
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    def call_later(self, delay: float, fn: Callable[[], object]) -> None:
        """Run fn() on the timer thread after delay seconds (it must be quick and must not raise)."""
        self.schedule(fn, delay, 0.0)

    def schedule(self, ch: Channel[float] | Callable[[], object], delay: float, interval: float) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("cannot schedule a timer after interpreter shutdown")
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), ch, interval))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gilfree-timer", daemon=True)
                self._thread.start()
                threading._register_atexit(self.stop)  # type: ignore[attr-defined]
            self._cond.notify()

    def _after_fork_in_child(self) -> None:
        # The timer thread does not exist in a forked child: start afresh (pending timers are dropped).
        self._cond = threading.Condition()
        self._heap = []  # same type as in __init__
        self._thread = None
        self._stopping = False

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                due, _, ch, interval = heapq.heappop(self._heap)
                if not isinstance(ch, Channel):
                    pass
                elif interval > 0 and not ch.closed:
                    now = time.monotonic()
                    nxt = due + interval
                    if nxt <= now:  # missed ticks are dropped, the phase is kept
                        nxt += math.ceil((now - nxt) / interval) * interval
                        if nxt <= now:
                            nxt += interval
                    heapq.heappush(self._heap, (nxt, next(self._seq), ch, interval))
            if not isinstance(ch, Channel):
                try:
                    ch()
                except Exception:  # noqa: BLE001 - a timer callback must not kill the timer thread
                    import traceback

                    traceback.print_exc()
                continue
            try:
                ch.send_nowait(time.monotonic())
            except (_core.WouldBlock, _core.ChannelClosed):
                pass  # a slow reader misses this tick; a stopped ticker gets nothing


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

    The channel stays open after that one value, as in Go, so a select can keep naming it.
    """
    delay = _check_seconds(seconds, "seconds")
    ch: Channel[float] = Channel(1)
    _timers.schedule(ch, delay, 0.0)
    return ch


class Ticker(Channel[float]):
    """A channel that receives time.monotonic() every ``interval`` seconds until stop().

    Capacity 1: ticks a slow reader misses are dropped. stop() closes it, so ``for t in ticker`` ends.
    """

    __slots__ = ()
    __module__ = "gilfree"

    def _after_fork_in_child(self) -> None:
        # The timer thread does not exist in a forked child: start afresh (pending timers are dropped).
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Channel[float], float]] = []
        self._thread = None
        self._stopping = False

    def stop(self) -> None:
        self.close()


def tick(interval: float) -> Ticker:
    """A Ticker delivering every ``interval`` seconds (Go's time.Tick / NewTicker)."""
    period = _check_seconds(interval, "interval")
    if period == 0:
        raise ValueError("interval must be positive")
    t = Ticker(1)
    _timers.schedule(t, period, period)
    return t
