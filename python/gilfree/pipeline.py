"""gilfree.pipeline: producer-consumer pipelines whose stages are connected by bounded channels.

    Pipeline(source).map(fetch, workers=8).filter(ok).batch(100).map(store).collect()

Backpressure runs end to end: every stage writes into a bounded channel, so a slow sink slows the source
and memory stays bounded, even with an endless source. ``map(..., ordered=True)`` keeps input order while
the stage's workers run concurrently (the study notes' channel of channels); ``ordered=False`` passes
results on as they complete. An exception in any stage stops the whole pipeline and is raised at the
consumer (the original exception, with its traceback); cancelling the pipeline's Context stops it the same
way (raising ``ctx.err()``). No thread is left running once the consumer has its answer.

A map stage runs on any ``concurrent.futures.Executor``: gilfree's default pool unless given one
(ProcessPoolExecutor for pure-Python CPU work; a dask.distributed ``Client.get_executor()`` beyond one
machine). Also here: ``merge(*channels)`` (fan-in) and ``broadcast(ch, n)`` (fan-out).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import threading
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from . import _core
from ._channel import Channel
from ._context import Context

T = TypeVar("T")
U = TypeVar("U")

__all__ = ["Pipeline", "broadcast", "merge"]

_STOP = object()


def _check_positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class _Run:
    """One running pipeline: its channels, threads and first error."""

    def __init__(self) -> None:
        self.channels: list[Channel[Any]] = []
        self.threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def channel(self, capacity: int) -> Channel[Any]:
        ch: Channel[Any] = Channel(capacity)
        self.channels.append(ch)
        return ch

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
        self.stop()

    def stop(self) -> None:
        self.stopped.set()
        for ch in self.channels:
            ch.close()

    def spawn(self, target: Callable[[], None], name: str) -> None:
        def body() -> None:
            try:
                target()
            except _core.ChannelClosed:
                pass  # the pipeline is stopping
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                self.fail(e)

        t = threading.Thread(target=body, name=f"gilfree-pipeline-{name}", daemon=True)
        self.threads.append(t)
        t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join()


def _stream_map(executor: cf.Executor, fn: Callable[[Any], Any], inp: Channel[Any], window: int,
                ordered: bool, run: _Run) -> Iterator[Any]:
    """fn over the items of inp on executor, at most `window` in flight, in input or completion order. It
    waits for input only when nothing is in flight: a source that pauses (a queue consumer, a socket)
    never holds back results that are ready."""
    pending: collections.deque[cf.Future[Any]] = collections.deque()
    done: Channel[cf.Future[Any]] = Channel(None)
    exhausted = False

    def top_up(block: bool) -> None:
        nonlocal exhausted
        while not exhausted and len(pending) < window and not run.stopped.is_set():
            try:
                item = inp.recv() if block and not pending else inp.recv_nowait()
            except _core.WouldBlock:
                return
            except _core.ChannelClosed:
                exhausted = True
                return
            f = executor.submit(fn, item)
            if not ordered:
                f.add_done_callback(done.send_nowait)
            pending.append(f)

    try:
        while True:
            if not pending:
                top_up(True)  # nothing in flight: wait for input
                if not pending:
                    break  # the input ended (or the run stopped)
            if ordered:
                f = pending.popleft()
            else:
                f = done.recv()
                pending.remove(f)
            value = f.result()
            top_up(False)  # what input is there, without waiting: the value goes on at once
            yield value
    finally:
        for f in pending:
            f.cancel()


class Pipeline(Generic[T]):
    """A chain of stages from ``source`` (an iterable or a Channel). Stages return a new Pipeline; nothing
    runs until it is iterated, collected or sent to a channel."""

    __module__ = "gilfree"

    def __init__(self, source: Iterable[T] | Channel[T], *, ctx: Context | None = None,
                 buffer: int = 16) -> None:
        if not isinstance(source, (Channel, _core.Channel)) and not hasattr(source, "__iter__"):
            raise TypeError(f"source must be an iterable or a Channel, not {type(source).__name__}")
        if ctx is not None and not isinstance(ctx, Context):
            raise TypeError(f"ctx must be a gilfree.Context or None, not {type(ctx).__name__}")
        self._source: Any = source
        self._ctx = ctx
        self._buffer = _check_positive(buffer, "buffer")
        self._stages: list[tuple[str, dict[str, Any]]] = []

    def _with(self, kind: str, **spec: Any) -> Pipeline[Any]:
        p: Pipeline[Any] = Pipeline.__new__(Pipeline)
        p._source, p._ctx, p._buffer = self._source, self._ctx, self._buffer
        p._stages = [*self._stages, (kind, spec)]
        return p

    # ---- stages -------------------------------------------------------------------------------------

    def map(self, fn: Callable[[T], U], workers: int = 1, buffer: int = 16, ordered: bool = True,
            executor: cf.Executor | None = None) -> Pipeline[U]:
        """fn on each item, ``workers`` at a time on ``executor`` (default: gilfree's default pool)."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        if executor is not None and not isinstance(executor, cf.Executor):
            raise TypeError("executor must be a concurrent.futures.Executor")
        return self._with("map", fn=fn, workers=_check_positive(workers, "workers"),
                          buffer=_check_positive(buffer, "buffer"), ordered=bool(ordered), executor=executor)

    def filter(self, pred: Callable[[T], object]) -> Pipeline[T]:
        """Keep the items for which pred is true."""
        if not callable(pred):
            raise TypeError(f"pred must be callable, not {type(pred).__name__}")
        return self._with("filter", fn=pred)

    def batch(self, n: int) -> Pipeline[list[T]]:
        """Lists of n items (the last may be shorter)."""
        return self._with("batch", n=_check_positive(n, "n"))

    def flat_map(self, fn: Callable[[T], Iterable[U]]) -> Pipeline[U]:
        """Each item of fn(item), in order."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        return self._with("flat_map", fn=fn)

    # ---- running ------------------------------------------------------------------------------------

    def _start(self) -> tuple[_Run, Channel[Any]]:
        run = _Run()
        first = run.channel(self._buffer)
        source = self._source

        if isinstance(source, _core.Channel):
            stop_ch = run.channel(0)

            def pump_channel() -> None:
                while True:
                    _, v = _core.select(source.recv, stop_ch.recv)
                    if v is _core.CLOSED:
                        break
                    first.send(v)
                first.close()
            run.spawn(pump_channel, "source")
        else:
            def pump_iterable() -> None:
                for v in source:
                    if run.stopped.is_set():
                        return
                    first.send(v)
                first.close()
            run.spawn(pump_iterable, "source")

        ch = first
        for i, (kind, spec) in enumerate(self._stages):
            inp, out = ch, run.channel(spec.get("buffer", self._buffer))
            run.spawn(self._stage(kind, spec, inp, out, run), f"{kind}{i}")
            ch = out
        if self._ctx is not None:
            ctx = self._ctx
            remove = ctx._on_cancel(lambda: run.fail(ctx.err() or _core.Cancelled("context cancelled")))
            run.threads.append(threading.Thread(target=lambda: (run.stopped.wait(), remove())))
            run.threads[-1].start()
        return run, ch

    @staticmethod
    def _stage(kind: str, spec: dict[str, Any], inp: Channel[Any], out: Channel[Any], run: _Run
               ) -> Callable[[], None]:
        fn: Callable[[Any], Any] = spec.get("fn") or (lambda v: v)

        def body() -> None:
            if kind == "map":
                executor = spec["executor"]
                if executor is None:
                    from ._parallel import default_pool

                    executor = default_pool()
                for v in _stream_map(executor, fn, inp, spec["workers"], spec["ordered"], run):
                    out.send(v)
            elif kind == "filter":
                for v in inp:
                    if fn(v):
                        out.send(v)
            elif kind == "batch":
                n, chunk = spec["n"], []
                for v in inp:
                    chunk.append(v)
                    if len(chunk) == n:
                        out.send(chunk)
                        chunk = []
                if chunk:
                    out.send(chunk)
            elif kind == "flat_map":
                for v in inp:
                    for w in fn(v):
                        out.send(w)
            out.close()
        return body

    def __iter__(self) -> Iterator[T]:
        run, out = self._start()
        try:
            for v in out:
                yield v
        finally:
            run.stop()  # a consumer that stops early stops everything
            run.join()
        if run.error is not None:
            raise run.error

    def collect(self) -> list[T]:
        """Run to the end; the items in a list."""
        return list(self)

    def to_channel(self, ch: Channel[T]) -> None:
        """Run to the end, sending every item into ch (blocking on it: ch's capacity is the backpressure);
        ch is not closed."""
        for v in self:
            ch.send(v)


def merge(*channels: Channel[T], capacity: int = 16) -> Channel[T]:
    """Fan-in: one channel with every value of ``channels`` as it arrives; closed once all are closed and
    drained."""
    for i, c in enumerate(channels):
        if not isinstance(c, _core.Channel):
            raise TypeError(f"merge() argument {i} must be a Channel, not {type(c).__name__}")
    out: Channel[T] = Channel(_check_positive(capacity, "capacity"))

    def run() -> None:
        live = list(channels)
        try:
            while live:
                i, v = _core.select(*(c.recv for c in live))
                if v is _core.CLOSED:
                    live.pop(i)
                else:
                    out.send(v)
        except _core.ChannelClosed:
            return  # the consumer closed the merged channel
        out.close()

    threading.Thread(target=run, name="gilfree-merge", daemon=True).start()
    return out


def broadcast(ch: Channel[T], n: int, *, capacity: int = 16) -> list[Channel[T]]:
    """Fan-out: n channels that each receive every value of ``ch``; the slowest reader sets the pace.
    All are closed when ``ch`` is closed and drained."""
    if not isinstance(ch, _core.Channel):
        raise TypeError(f"ch must be a Channel, not {type(ch).__name__}")
    outs: list[Channel[T]] = [Channel(_check_positive(capacity, "capacity")) for _ in range(_check_positive(n, "n"))]

    def run() -> None:
        for v in ch:
            for o in outs:
                try:
                    o.send(v)
                except _core.ChannelClosed:
                    pass  # that reader left
        for o in outs:
            o.close()

    threading.Thread(target=run, name="gilfree-broadcast", daemon=True).start()
    return outs
