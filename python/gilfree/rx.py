"""gilfree.rx: observables (ReactiveX) with backpressure, on top of gilfree's channels and pools.

    Observable.from_iterable(range(10)).map(lambda x: x * x).filter(lambda x: x % 2).subscribe(print)

Sources: ``from_iterable`` (emits in the subscribing thread), ``from_channel`` and ``interval`` (emit from
their own thread), ``create(subscribe_fn)``. Operators: map, filter, take, skip, scan, reduce, distinct,
buffer(count), merge, zip, flat_map, debounce(seconds), throttle(seconds), observe_on(pool).
``subscribe(on_next, on_error, on_completed)`` returns a Disposable; disposing it stops the source.

Backpressure, which ReactiveX for Python dropped: ``observe_on(pool)`` and ``to_channel(capacity)`` deliver
through a bounded channel, so a slow observer slows a source that can wait (an iterable or a channel)
instead of queueing without bound. Every observer is called serially, even when several threads emit
(merge): calls into one observer never overlap, and nothing follows on_error or on_completed.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable, Iterable

from . import _core
from ._channel import Channel

__all__ = ["Disposable", "Observable", "Observer"]

_MISSING = object()


class Disposable:
    """Stops a subscription: sources check ``disposed`` and registered cleanups run once."""

    __module__ = "gilfree.rx"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._disposed = False
        self._cleanups: list[Callable[[], object]] = []

    @property
    def disposed(self) -> bool:
        return self._disposed

    def add(self, cleanup: Callable[[], object]) -> None:
        with self._lock:
            if not self._disposed:
                self._cleanups.append(cleanup)
                return
        cleanup()

    def dispose(self) -> None:
        with self._lock:
            if self._disposed:
                return
            self._disposed = True
            cleanups, self._cleanups = self._cleanups, []
        for c in cleanups:
            c()


class Observer:
    """Serialises calls (a lock), and stops after on_error/on_completed or once disposed."""

    __module__ = "gilfree.rx"

    def __init__(self, on_next: Callable[[Any], object] | None = None,
                 on_error: Callable[[BaseException], object] | None = None,
                 on_completed: Callable[[], object] | None = None, disposable: Disposable | None = None,
                 *, final: bool = False) -> None:
        self._next, self._error, self._completed = on_next, on_error, on_completed
        self._lock = threading.RLock()
        self._done = False
        self._d = disposable
        self._final = final  # the subscriber's own observer: the end of the stream disposes it all

    def on_next(self, value: Any) -> None:
        with self._lock:
            if self._done or (self._d is not None and self._d.disposed):
                return
            if self._next is not None:
                try:
                    self._next(value)
                except BaseException as e:  # noqa: BLE001 - an observer that raises ends the stream
                    self._fail(e)

    def _fail(self, e: BaseException) -> None:
        self._done = True
        if self._error is not None:
            self._error(e)
        if self._final and self._d is not None:
            self._d.dispose()

    def on_error(self, exc: BaseException) -> None:
        with self._lock:
            if self._done:
                return
            self._fail(exc)

    def on_completed(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            if self._completed is not None:
                self._completed()
            if self._final and self._d is not None:
                self._d.dispose()


Subscribe = Callable[[Observer, Disposable], None]


def _thread(target: Callable[[], object], name: str) -> None:
    threading.Thread(target=target, name=f"gilfree-rx-{name}", daemon=True).start()


class Observable:
    """A push source of values. Build with the static constructors, chain operators, then subscribe."""

    __module__ = "gilfree.rx"

    def __init__(self, subscribe: Subscribe) -> None:
        self._subscribe = subscribe

    # ---- sources -------------------------------------------------------------------------------------

    @staticmethod
    def from_iterable(iterable: Iterable[Any]) -> Observable:
        def sub(obs: Observer, d: Disposable) -> None:
            try:
                for v in iterable:
                    if d.disposed:
                        return
                    obs.on_next(v)
            except BaseException as e:  # noqa: BLE001
                obs.on_error(e)
                return
            obs.on_completed()
        return Observable(sub)

    @staticmethod
    def from_channel(ch: Channel[Any]) -> Observable:
        """Emits what ``ch`` receives (from a thread of its own) until it is closed and drained."""
        if not isinstance(ch, _core.Channel):
            raise TypeError(f"from_channel() needs a Channel, not {type(ch).__name__}")

        def sub(obs: Observer, d: Disposable) -> None:
            stop: Channel[None] = Channel()
            d.add(stop.close)

            def pump() -> None:
                while not d.disposed:
                    i, v = _core.select(ch.recv, stop.recv)
                    if i == 1 or v is _core.CLOSED:
                        break
                    obs.on_next(v)
                if not d.disposed:
                    obs.on_completed()
            _thread(pump, "from-channel")
        return Observable(sub)

    @staticmethod
    def interval(seconds: float) -> Observable:
        """0, 1, 2, ... every ``seconds``, from a thread of its own, until disposed."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError("seconds must be a positive number")

        def sub(obs: Observer, d: Disposable) -> None:
            stop = threading.Event()
            d.add(stop.set)

            def tick() -> None:
                i = 0
                next_t = time.monotonic() + seconds
                while not stop.wait(max(0.0, next_t - time.monotonic())):
                    obs.on_next(i)
                    i += 1
                    next_t += seconds
            _thread(tick, "interval")
        return Observable(sub)

    @staticmethod
    def create(subscribe_fn: Callable[[Observer], object]) -> Observable:
        """``subscribe_fn(observer)`` emits through observer.on_next/on_error/on_completed and may return
        a cleanup callable (or a Disposable) run on dispose."""
        if not callable(subscribe_fn):
            raise TypeError("create() needs a callable")

        def sub(obs: Observer, d: Disposable) -> None:
            r = subscribe_fn(obs)
            if isinstance(r, Disposable):
                d.add(r.dispose)
            elif callable(r):
                d.add(r)
        return Observable(sub)

    # ---- subscribing ---------------------------------------------------------------------------------

    def subscribe(self, on_next: Callable[[Any], object] | None = None,
                  on_error: Callable[[BaseException], object] | None = None,
                  on_completed: Callable[[], object] | None = None) -> Disposable:
        d = Disposable()
        self._subscribe(Observer(on_next, on_error, on_completed, d, final=True), d)
        return d

    def _op(self, make: Callable[[Observer, Disposable], Observer]) -> Observable:
        return Observable(lambda obs, d: self._subscribe(make(obs, d), d))

    # ---- operators -----------------------------------------------------------------------------------

    def map(self, fn: Callable[[Any], Any]) -> Observable:
        return self._op(lambda o, d: Observer(lambda v: o.on_next(fn(v)), o.on_error, o.on_completed, d))

    def filter(self, pred: Callable[[Any], object]) -> Observable:
        return self._op(lambda o, d: Observer(lambda v: o.on_next(v) if pred(v) else None, o.on_error,
                                              o.on_completed, d))

    def take(self, n: int) -> Observable:
        if n < 0:
            raise ValueError("n must be >= 0")

        def make(o: Observer, d: Disposable) -> Observer:
            left = [n]

            def nxt(v: Any) -> None:
                if left[0] > 0:
                    left[0] -= 1
                    o.on_next(v)
                if left[0] == 0:
                    o.on_completed()
                    d.dispose()  # the source stops
            if n == 0:
                o.on_completed()
                d.dispose()
            return Observer(nxt, o.on_error, o.on_completed, d)
        return self._op(make)

    def skip(self, n: int) -> Observable:
        def make(o: Observer, d: Disposable) -> Observer:
            seen = [0]

            def nxt(v: Any) -> None:
                seen[0] += 1
                if seen[0] > n:
                    o.on_next(v)
            return Observer(nxt, o.on_error, o.on_completed, d)
        return self._op(make)

    def scan(self, fn: Callable[[Any, Any], Any], seed: Any = _MISSING) -> Observable:
        def make(o: Observer, d: Disposable) -> Observer:
            acc = [seed]

            def nxt(v: Any) -> None:
                acc[0] = v if acc[0] is _MISSING else fn(acc[0], v)
                o.on_next(acc[0])
            return Observer(nxt, o.on_error, o.on_completed, d)
        return self._op(make)

    def reduce(self, fn: Callable[[Any, Any], Any], seed: Any = _MISSING) -> Observable:
        def make(o: Observer, d: Disposable) -> Observer:
            acc = [seed]

            def nxt(v: Any) -> None:
                acc[0] = v if acc[0] is _MISSING else fn(acc[0], v)

            def done() -> None:
                if acc[0] is not _MISSING:
                    o.on_next(acc[0])
                o.on_completed()
            return Observer(nxt, o.on_error, done, d)
        return self._op(make)

    def distinct(self) -> Observable:
        def make(o: Observer, d: Disposable) -> Observer:
            seen: set[Any] = set()

            def nxt(v: Any) -> None:
                if v not in seen:
                    seen.add(v)
                    o.on_next(v)
            return Observer(nxt, o.on_error, o.on_completed, d)
        return self._op(make)

    def buffer(self, count: int) -> Observable:
        if count < 1:
            raise ValueError("count must be >= 1")

        def make(o: Observer, d: Disposable) -> Observer:
            buf: list[Any] = []

            def nxt(v: Any) -> None:
                buf.append(v)
                if len(buf) == count:
                    o.on_next(list(buf))
                    buf.clear()

            def done() -> None:
                if buf:
                    o.on_next(list(buf))
                o.on_completed()
            return Observer(nxt, o.on_error, done, d)
        return self._op(make)

    def merge(self, *others: Observable) -> Observable:
        sources = (self, *others)

        def sub(obs: Observer, d: Disposable) -> None:
            left = [len(sources)]
            lock = threading.Lock()

            def completed() -> None:
                with lock:
                    left[0] -= 1
                    last = left[0] == 0
                if last:
                    obs.on_completed()
            for s in sources:  # obs serialises the concurrent emitters
                s._subscribe(Observer(obs.on_next, obs.on_error, completed, d), d)
        return Observable(sub)

    def zip(self, *others: Observable) -> Observable:
        sources = (self, *others)

        def sub(obs: Observer, d: Disposable) -> None:
            queues: list[list[Any]] = [[] for _ in sources]
            finished = [False] * len(sources)
            lock = threading.Lock()

            def nxt(i: int, v: Any) -> None:
                with lock:
                    queues[i].append(v)
                    ready = all(queues)
                    row = tuple(q.pop(0) for q in queues) if ready else None
                    end = any(f and not q for f, q in zip(finished, queues))
                if row is not None:
                    obs.on_next(row)
                if end:
                    obs.on_completed()

            def completed(i: int) -> None:
                with lock:
                    finished[i] = True
                    end = not queues[i]
                if end:
                    obs.on_completed()
            for i, s in enumerate(sources):
                s._subscribe(Observer(functools.partial(nxt, i), obs.on_error, functools.partial(completed, i), d),
                             d)
        return Observable(sub)

    def flat_map(self, fn: Callable[[Any], Observable]) -> Observable:
        def sub(obs: Observer, d: Disposable) -> None:
            active = [1]
            lock = threading.Lock()

            def completed() -> None:
                with lock:
                    active[0] -= 1
                    last = active[0] == 0
                if last:
                    obs.on_completed()

            def nxt(v: Any) -> None:
                inner = fn(v)
                if not isinstance(inner, Observable):
                    raise TypeError("flat_map's function must return an Observable")
                with lock:
                    active[0] += 1
                inner._subscribe(Observer(obs.on_next, obs.on_error, completed, d), d)
            self._subscribe(Observer(nxt, obs.on_error, completed, d), d)
        return Observable(sub)

    def debounce(self, seconds: float) -> Observable:
        """Emit a value only once ``seconds`` pass without a newer one (the last is flushed at completion)."""
        def sub(obs: Observer, d: Disposable) -> None:
            lock = threading.Lock()
            state: dict[str, Any] = {"gen": 0, "value": _MISSING}

            def fire(gen: int) -> None:
                with lock:
                    if gen != state["gen"] or state["value"] is _MISSING:
                        return
                    v, state["value"] = state["value"], _MISSING
                obs.on_next(v)

            def nxt(v: Any) -> None:
                with lock:
                    state["gen"] += 1
                    state["value"] = v
                    gen = state["gen"]
                t = threading.Timer(seconds, fire, args=(gen,))
                t.daemon = True
                t.start()

            def done() -> None:
                with lock:
                    v, state["value"] = state["value"], _MISSING
                    state["gen"] += 1
                if v is not _MISSING:
                    obs.on_next(v)
                obs.on_completed()
            self._subscribe(Observer(nxt, obs.on_error, done, d), d)
        return Observable(sub)

    def throttle(self, seconds: float) -> Observable:
        """Emit the first value, then drop values for ``seconds``."""
        def make(o: Observer, d: Disposable) -> Observer:
            last = [float("-inf")]

            def nxt(v: Any) -> None:
                now = time.monotonic()
                if now - last[0] >= seconds:
                    last[0] = now
                    o.on_next(v)
            return Observer(nxt, o.on_error, o.on_completed, d)
        return self._op(make)

    def observe_on(self, pool: Any, capacity: int = 64) -> Observable:
        """Deliver to the observer on ``pool`` (any Executor) through a bounded channel: a slow observer
        makes the emitter wait (backpressure) instead of queueing without bound."""
        def sub(obs: Observer, d: Disposable) -> None:
            ch: Channel[tuple[str, Any]] = Channel(capacity)
            d.add(ch.close)

            def drain() -> None:
                for kind, v in ch:
                    if kind == "next":
                        obs.on_next(v)
                    elif kind == "error":
                        obs.on_error(v)
                        return
                    else:
                        obs.on_completed()
                        return
            pool.submit(drain)

            def put(kind: str, v: Any) -> None:
                try:
                    ch.send((kind, v))
                except _core.ChannelClosed:
                    pass  # disposed
            self._subscribe(Observer(lambda v: put("next", v), lambda e: put("error", e),
                                     lambda: put("completed", None), None), d)
        return Observable(sub)

    def to_channel(self, capacity: int = 64) -> Channel[Any]:
        """Subscribe, delivering into a bounded channel (closed at completion or error): a consumer that
        reads slowly makes the source wait. Subscribing happens in a thread of its own."""
        ch: Channel[Any] = Channel(capacity)

        def put(v: Any) -> None:
            ch.send(v)

        _thread(lambda: self.subscribe(put, lambda e: ch.close(), ch.close), "to-channel")
        return ch
