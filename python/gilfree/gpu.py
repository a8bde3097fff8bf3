"""Streaming through a GPU: host chunks copied in, computed and copied out on several CUDA streams at once.

``stream_map(kernel, chunks)`` runs ``kernel`` over a sequence of host arrays (NumPy) on a GPU with CuPy,
each chunk going host-to-device copy, kernel, device-to-host copy on one of ``streams`` CUDA streams, so that
one chunk's copies overlap another's compute: the latency hiding of the study notes, done by the program
rather than by the GPU's own warp scheduler. gilfree's channels do the plumbing:

- the pinned (page-locked) staging buffers are ``streams * depth`` slots in a bounded ``Channel`` of free
  slots: a chunk is taken from ``chunks`` only when a slot is free, so the host runs at most that far ahead
  of the device (backpressure) and memory stays bounded, whatever the length of ``chunks``;
- every chunk gets a reply channel, and the reply channels travel in input order through another channel
  (a channel of channels): results come back in input order, however the streams finish;
- one thread per stream waits on the device with the GIL released; the caller waits on a channel, so
  Ctrl-C reaches it within 50 ms.

Without a GPU, ``backend="cpu"`` (what ``backend=None`` picks then) runs the same pipeline over NumPy,
with a thread per stream standing in for a CUDA stream: the order, backpressure, errors and cancellation
are the same code, tested everywhere.
"""

from __future__ import annotations

import collections
import importlib
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from ._channel import Channel
from ._core import ChannelClosed, WouldBlock

__all__ = ["Availability", "Span", "available", "array_module", "stream_map"]

BACKENDS = ("cupy", "cpu")


def _cupy() -> Any:
    """CuPy, imported (an optional dependency, untyped here)."""
    return importlib.import_module("cupy")


@dataclass(frozen=True)
class Availability:
    """What :func:`available` found: true when a CUDA device and CuPy are both usable. ``device`` names
    the GPU (``"NVIDIA H200 (CuPy 14.2.0, CUDA runtime 13000)"``); ``reason`` says why not, otherwise."""

    ok: bool
    device: str = ""
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def available() -> Availability:
    """Whether a CUDA device and CuPy are present, and why not when they are not:

        >>> from gilfree import gpu
        >>> a = gpu.available()
        >>> bool(a) == bool(a.device) and bool(a) != bool(a.reason)
        True
    """
    try:
        cupy = _cupy()
    except ImportError as e:
        return Availability(False, reason=f"CuPy is not installed ({e}): pip install 'gilfree[gpu]' "
                                          "(CuPy for CUDA 12: cupy-cuda12x; CUDA 13: cupy-cuda13x)")
    except Exception as e:  # a broken install (missing CUDA libraries) raises other errors at import
        return Availability(False, reason=f"CuPy failed to import: {type(e).__name__}: {e}")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, no device
        return Availability(False, reason=f"CuPy found no CUDA device: {e}")
    if n < 1:
        return Availability(False, reason="CuPy found no CUDA device")
    try:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        rt = cupy.cuda.runtime.runtimeGetVersion()
    except Exception as e:
        return Availability(False, reason=f"the CUDA device cannot be used: {type(e).__name__}: {e}")
    return Availability(True, device=f"{name} (CuPy {cupy.__version__}, CUDA runtime {rt})")


def array_module(x: Any) -> Any:
    """The array module of ``x``: ``cupy`` for a device array, ``numpy`` otherwise. A kernel written with
    ``xp = gpu.array_module(x)`` runs on both backends:

        >>> import numpy as np
        >>> from gilfree import gpu
        >>> gpu.array_module(np.zeros(3)).__name__
        'numpy'
    """
    if type(x).__module__.startswith("cupy"):
        return _cupy()
    import numpy

    return numpy


@dataclass(frozen=True)
class Span:
    """One phase of one chunk in a ``timeline``, in the order they run: ``"stage"`` (the host copies the
    chunk into its pinned staging buffer), ``"h2d"`` (copy to the device), ``"kernel"``, ``"d2h"`` (copy
    back into the pinned buffer) and ``"collect"`` (the host copies the result out of it, into the array the
    iterator returns). ``start`` and ``end`` are seconds since the stream started: CUDA events for the
    device phases on the GPU backend, the host's clock for the others."""

    chunk: int
    stream: int
    phase: str
    start: float
    end: float


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


# ---- backends: a stream runs the three steps of a chunk in order, asynchronously -------------------------


class _Slot:
    """A staging slot: host buffers for one chunk in flight on stream ``stream`` (pinned on the GPU), and
    what the device holds for it until its copy back has finished."""

    __slots__ = ("stream", "host_in", "host_out", "held", "out_meta", "marks", "staged")

    def __init__(self, stream: int) -> None:
        self.stream = stream
        self.host_in: Any = None
        self.host_out: Any = None
        self.held: Any = None  # device arrays, kept alive until the stream is past them
        self.out_meta: Any = None  # (shape, dtype) of the result
        self.marks: Any = None  # timeline: events or times of the device phases' boundaries
        self.staged: Any = None  # timeline: host times of the staging copy's start and end


def _ensure(slot: _Slot, attr: str, nbytes: int, alloc: Callable[[int], Any]) -> Any:
    """The slot's host buffer ``attr`` (host_in or host_out), made or grown to hold nbytes."""
    buf = getattr(slot, attr)
    if buf is None or buf.nbytes < nbytes:
        buf = alloc(max(nbytes, 1))
        setattr(slot, attr, buf)
    return buf


def _as_chunk(np: Any, chunk: Any, i: int) -> Any:
    if isinstance(chunk, np.ndarray):
        arr = chunk
    else:
        try:
            arr = np.asarray(chunk)
        except Exception as e:
            raise TypeError(f"chunks[{i}] must be an array (a NumPy array or anything numpy.asarray takes), "
                            f"not {type(chunk).__name__}: {e}") from None
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"chunks[{i}] must be an array of numbers, not of dtype {arr.dtype} "
                        f"({type(chunk).__name__})")
    return np.ascontiguousarray(arr)


def _check_result(xp: Any, y: Any) -> Any:
    if not isinstance(y, xp.ndarray):
        raise TypeError(f"kernel must return an array ({xp.__name__}.ndarray), not {type(y).__name__}")
    if y.dtype.kind not in "biufc":
        raise TypeError(f"kernel must return an array of numbers, not of dtype {y.dtype}")
    return xp.ascontiguousarray(y)


class _CpuBackend:
    """NumPy on the host: a thread per stream runs each chunk's copy in, kernel and copy out in order."""

    name = "cpu"

    def __init__(self, streams: int) -> None:
        import numpy

        from ._pool import ThreadPool

        self.np = numpy
        self.pools = [ThreadPool(max_workers=1) for _ in range(streams)]
        self.host_t0 = time.perf_counter()

    def ensure(self, slot: _Slot, attr: str, nbytes: int) -> Any:
        return _ensure(slot, attr, nbytes, lambda n: self.np.empty(n, dtype=self.np.uint8))

    def submit(self, slot: _Slot, arr: Any, kernel: Callable[[Any], Any], timeline: bool) -> Any:
        np = self.np
        s0 = time.perf_counter()
        staged = self.ensure(slot, "host_in", arr.nbytes)
        staged[:arr.nbytes] = arr.reshape(-1).view(np.uint8)
        slot.staged = (s0 - self.host_t0, time.perf_counter() - self.host_t0)
        shape, dtype, nbytes = arr.shape, arr.dtype, arr.nbytes
        clock = time.perf_counter

        def run() -> None:
            t0 = clock()
            x = staged[:nbytes].copy().view(dtype).reshape(shape)  # "host to device"
            t1 = clock()
            y = _check_result(np, kernel(x))
            t2 = clock()
            out = self.ensure(slot, "host_out", y.nbytes)
            out[:y.nbytes] = y.reshape(-1).view(np.uint8)  # "device to host"
            slot.out_meta = (y.shape, y.dtype)
            if timeline:
                slot.marks = [t - self.host_t0 for t in (t0, t1, t2, clock())]

        return self.pools[slot.stream].submit(run)

    def wait(self, event: Any) -> None:
        event.result()  # a gilfree Future: waits with the GIL released; raises the kernel's exception

    def spans(self, slot: _Slot) -> list[float]:
        return list(slot.marks)

    def release(self, slot: _Slot, clean: bool) -> None:
        slot.held = None

    def close(self) -> None:
        for p in self.pools:
            p.shutdown(wait=True)


class _CupyBackend:
    """CuPy: each chunk is an async copy from a pinned buffer, the kernel, and an async copy back into a
    pinned buffer on its stream; an event recorded after them says when the slot's buffers are free."""

    name = "cupy"

    def __init__(self, streams: int) -> None:
        import numpy

        cupy = _cupy()
        self.cp = cupy
        self.np = numpy
        self.device = cupy.cuda.Device()
        self.streams = [cupy.cuda.Stream(non_blocking=True) for _ in range(streams)]
        self.t0 = cupy.cuda.Event()
        self.t0.record(self.streams[0])
        self.t0.synchronize()
        self.host_t0 = time.perf_counter()  # the same instant on the host's clock, within microseconds
        self.h2d = cupy.cuda.runtime.memcpyHostToDevice
        self.d2h = cupy.cuda.runtime.memcpyDeviceToHost

    def ensure(self, slot: _Slot, attr: str, nbytes: int) -> Any:
        def pinned(n: int) -> Any:
            return self.np.ndarray((n,), dtype=self.np.uint8, buffer=self.cp.cuda.alloc_pinned_memory(n))

        return _ensure(slot, attr, nbytes, pinned)

    def submit(self, slot: _Slot, arr: Any, kernel: Callable[[Any], Any], timeline: bool) -> Any:
        cp, rt = self.cp, self.cp.cuda.runtime
        stream = self.streams[slot.stream]
        s0 = time.perf_counter()
        staged = self.ensure(slot, "host_in", arr.nbytes)
        staged[:arr.nbytes] = arr.reshape(-1).view(self.np.uint8)
        slot.staged = (s0 - self.host_t0, time.perf_counter() - self.host_t0)
        marks = [cp.cuda.Event() for _ in range(4)] if timeline else None
        with self.device, stream:
            if marks:
                marks[0].record(stream)
            d_in = cp.empty(arr.shape, dtype=arr.dtype)
            if arr.nbytes:
                rt.memcpyAsync(d_in.data.ptr, staged.ctypes.data, arr.nbytes, self.h2d, stream.ptr)
            if marks:
                marks[1].record(stream)
            slot.held = (d_in,)  # before the kernel: if it raises, the slot still holds what the stream uses
            y = _check_result(cp, kernel(d_in))
            if marks:
                marks[2].record(stream)
            out = self.ensure(slot, "host_out", y.nbytes)
            if y.nbytes:
                rt.memcpyAsync(out.ctypes.data, y.data.ptr, y.nbytes, self.d2h, stream.ptr)
            slot.held = (d_in, y)
            slot.out_meta = (y.shape, y.dtype)
            done = cp.cuda.Event(block=True, disable_timing=True)  # its waiter sleeps, not spins
            if marks:
                marks[3].record(stream)
            done.record(stream)
        slot.marks = marks
        return done

    def wait(self, event: Any) -> None:
        event.synchronize()  # cudaEventSynchronize, with the GIL released by CuPy

    def spans(self, slot: _Slot) -> list[float]:
        get = self.cp.cuda.get_elapsed_time
        return [get(self.t0, e) / 1e3 for e in slot.marks]

    def release(self, slot: _Slot, clean: bool) -> None:
        """Drops the chunk's device arrays. ``clean``: its event completed, so the stream is past them;
        otherwise (the kernel raised after queueing work, or the device failed) wait for the stream first,
        so that the memory goes back to the pool only once nothing uses it."""
        held, slot.held = slot.held, None
        if held is not None and not clean:
            try:
                self.streams[slot.stream].synchronize()
            except Exception:  # noqa: S110 - a failed device: its error is reported by the chunk's reply
                pass
        del held

    def close(self) -> None:
        for s in self.streams:
            try:
                s.synchronize()
            except Exception:  # noqa: S110 - a failed device: the chunks' replies said so
                pass


def _backend(name: str | None, streams: int) -> Any:
    """The backend ``name`` (checked by stream_map), or for None the GPU where available, else the CPU."""
    if name is None:
        name = "cupy" if available() else "cpu"
    return _CupyBackend(streams) if name == "cupy" else _CpuBackend(streams)


# ---- the pipeline ------------------------------------------------------------------------------------------


def stream_map(kernel: Callable[[Any], Any], chunks: Iterable[Any], *, streams: int = 4, depth: int = 2,
               backend: str | None = None, timeline: list[Span] | None = None) -> Iterator[Any]:
    """Run ``kernel`` over host arrays on ``streams`` streams: each chunk is copied to the device, passed
    to ``kernel`` (which takes a device array and returns one: ``cupy.ndarray`` on the GPU, ``numpy.ndarray``
    on the CPU backend) and its result copied back. Returns a lazy iterator of the results, as NumPy arrays,
    in the order of ``chunks``.

    At most ``streams * depth`` chunks are in flight or waiting to be taken, each in a staging slot from a
    bounded channel of free slots: ``chunks`` is read only as fast as the device and the caller go, and
    memory stays bounded. An exception raised by ``kernel`` (or a device error) is raised by the iterator at
    that chunk's place, after the results before it; the stream then stops. Breaking out of the loop, an
    exception or Ctrl-C stops it too: chunks not yet taken are never read, and the device memory of the
    chunks in flight goes back once the streams are past them. ``timeline``, a list, receives a
    :class:`Span` per chunk and phase.

    ``backend``: ``"cupy"``, ``"cpu"`` (NumPy, a thread per stream standing in for a CUDA stream), or
    ``None``: the GPU where :func:`available`, else the CPU:

        >>> import numpy as np
        >>> from gilfree import gpu
        >>> chunks = (np.arange(4.0) + i for i in range(3))
        >>> [r.tolist() for r in gpu.stream_map(lambda x: x * 2, chunks, backend="cpu")]
        [[0.0, 2.0, 4.0, 6.0], [2.0, 4.0, 6.0, 8.0], [4.0, 6.0, 8.0, 10.0]]
    """
    if not callable(kernel):
        raise TypeError(f"kernel must be callable, not {type(kernel).__name__}")
    for name, v in (("streams", streams), ("depth", depth)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, not {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, not {v}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None (the GPU where available), not {backend!r}")
    if timeline is not None and not isinstance(timeline, list):
        raise TypeError(f"timeline must be a list or None, not {type(timeline).__name__}")
    if backend == "cupy" and not (a := available()):
        raise RuntimeError(f"backend='cupy' cannot run here: {a.reason}")
    try:
        it = iter(chunks)
    except TypeError:
        raise TypeError(f"chunks must be an iterable of arrays, not {type(chunks).__name__}") from None
    return _stream(kernel, it, streams, depth, backend, timeline)


def _stream(kernel: Callable[[Any], Any], it: Iterator[Any], streams: int, depth: int, backend_name: str | None,
            timeline: list[Span] | None) -> Iterator[Any]:
    be = _backend(backend_name, streams)
    np = be.np
    nslots = streams * depth
    free: Channel[_Slot] = Channel(nslots)
    for k in range(nslots):
        free.send(_Slot(k % streams))
    # a reply channel per chunk, in input order: each holds a slot, and one more is the feeder's last word
    # (the chunks iterator raised), so sending to it never blocks
    order: Channel[Channel[Any]] = Channel(nslots + 1)
    work: list[Channel[Any]] = [Channel(nslots) for _ in range(streams)]
    lock = threading.Lock()  # the feeder hands out chunks only while not stopped; stopping takes it
    stopped = False  # the caller is gone: no more chunks, and results are no longer wanted

    def feed() -> None:
        """Reads the chunks, one per free slot, and hands each to its slot's stream."""
        try:
            for i in itertools.count():
                try:
                    chunk = next(it)
                except StopIteration:
                    return
                arr = _as_chunk(np, chunk, i)
                try:
                    slot = free.recv()
                except ChannelClosed:
                    return
                reply: Channel[Any] = Channel(1)
                with lock:
                    if stopped:
                        return
                    order.send(reply)  # never blocks: each reply in it holds one of the nslots slots
                    work[slot.stream].send((i, slot, arr, reply))  # nor this: its slot is in hand
        except BaseException as e:  # the chunks iterator raised, or a chunk is not an array
            with lock:
                if not stopped:
                    reply = Channel(1)
                    order.send(reply)  # slot-less: the one place beyond the slots
                    reply.send((None, _Failure(e)))
        finally:
            with lock:
                for w in work:
                    w.close()
                order.close()

    def finish(i: int, slot: _Slot, event: Any, reply: Channel[Any]) -> None:
        """Waits for a chunk's copy back, then hands its result (a copy: the slot is reused) to the caller."""
        result: Any = None
        try:
            be.wait(event)
            if not stopped:
                shape, dtype = slot.out_meta
                n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                c0 = time.perf_counter()
                result = np.empty(shape, dtype)
                result.reshape(-1).view(np.uint8)[:] = slot.host_out[:n]
                if timeline is not None:
                    m = be.spans(slot)
                    timeline.append(Span(i, slot.stream, "stage", *slot.staged))
                    timeline.extend(Span(i, slot.stream, ph, m[k], m[k + 1])
                                    for k, ph in enumerate(("h2d", "kernel", "d2h")))
                    timeline.append(Span(i, slot.stream, "collect", c0 - be.host_t0,
                                         time.perf_counter() - be.host_t0))
            be.release(slot, clean=True)
        except BaseException as e:
            result = _Failure(e)
            be.release(slot, clean=False)
        reply.send((slot, result))  # the reply channel holds one: never blocks
        result = None  # a failure's traceback holds this frame: no cycle through it

    def run_stream(s: int) -> None:
        """One stream: stages and submits its chunks, up to ``depth`` in flight, and finishes them in order.
        Staging and copying back run here, one thread per stream, so the host side is parallel too."""
        pending: collections.deque[tuple[int, _Slot, Any, Channel[Any]]] = collections.deque()
        closed = False
        while pending or not closed:
            item = None
            if not closed and len(pending) < depth:
                try:
                    item = work[s].recv_nowait() if pending else work[s].recv()
                except WouldBlock:
                    pass
                except ChannelClosed:
                    closed = True
            if item is None:
                if pending:
                    finish(*pending.popleft())
                continue
            i, slot, arr, reply = item
            if stopped:
                reply.send((slot, None))
                continue
            try:
                event = be.submit(slot, arr, kernel, timeline is not None)
            except BaseException as e:
                be.release(slot, clean=False)
                reply.send((slot, _Failure(e)))
                continue
            del arr
            pending.append((i, slot, event, reply))

    feeder = threading.Thread(target=feed, name="gilfree-gpu-feed", daemon=True)
    runners = [threading.Thread(target=run_stream, args=(s,), name=f"gilfree-gpu-stream-{s}")
               for s in range(streams)]
    def stop() -> None:
        """Stops the stream (no join): for its own end below, and at interpreter exit."""
        nonlocal stopped
        with lock:
            stopped = True
            for w in work:
                w.close()  # the stream threads finish what the streams hold, then end
            order.close()
        free.close()  # a feeder waiting for a slot ends

    interrupted = False
    _track(stop)
    try:
        feeder.start()
        for r in runners:
            r.start()
        for reply in order:
            slot, result = reply.recv()
            if slot is not None:
                free.send(slot)  # never blocks: the slot was taken from it
            if isinstance(result, _Failure):
                exc, result = result.exc, None
                try:
                    raise exc
                finally:
                    del exc  # no cycle through this frame: the exception may hold device memory
            yield result
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        stop()
        _untrack(stop)
        if not interrupted:
            # bounded: the device work in flight, at most nslots chunks (a feeder inside the caller's
            # chunks iterator is not waited for: it stops when that returns, before taking a slot)
            _finish(runners, be)
        else:
            # Ctrl-C: return at once; the stream threads release the device memory when the streams are
            # past it, and the pool threads of the CPU backend end then
            threading.Thread(target=_finish, args=(runners, be), name="gilfree-gpu-close").start()


# Streams left suspended (an iterator neither exhausted nor closed) are stopped before the interpreter joins
# its threads at exit, as concurrent.futures shuts its pools down: their stream threads would wait forever.
_live: set[Callable[[], None]] = set()
_live_lock = threading.Lock()
_hooked = False


def _track(stop: Callable[[], None]) -> None:
    global _hooked
    with _live_lock:
        _live.add(stop)
        if not _hooked:
            threading._register_atexit(_stop_all_at_exit)  # type: ignore[attr-defined]
            _hooked = True


def _untrack(stop: Callable[[], None]) -> None:
    with _live_lock:
        _live.discard(stop)


def _stop_all_at_exit() -> None:
    with _live_lock:
        stops = list(_live)
    for stop in stops:
        stop()


def _finish(runners: list[threading.Thread], be: Any) -> None:
    for r in runners:
        if r.ident is not None:
            r.join()
    be.close()
