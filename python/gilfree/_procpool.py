"""gilfree.ProcessPool: a concurrent.futures.Executor whose workers are processes, fed through ProcessChannels.

Two shared-memory channels (src/procchan.c) carry the work: ``tasks`` (parent -> workers) and ``results``
(workers -> parent). One manager thread in the parent receives the results, completes the futures, feeds
the tasks that did not fit in ``tasks`` and watches the workers.

Wire format. A task is ``<q tid><I n>`` + pickle(fn) (n bytes) + pickle((args, kwargs)): a function that
pickles by name is pickled once per pool and looked up once per worker (both caches are small). A result
is ``<q tid><B kind>`` + pickle of the value (kind _OK), of the exception (kind _ERR), or of a text (the
control kinds). The id comes first
and unpickled, so a payload that fails to unpickle still fails the right future. A pickle larger than
``_INLINE_MAX`` travels in a shared-memory block of its own (``_Big``): the receiver reads and unlinks it.

Lifecycle of a task (what cancel() can stop): submit pickles it; it goes straight into ``tasks`` when that
has room and nothing waits before it, else into ``overflow``, which the manager moves on as the workers take
tasks. ``tasks`` holds up to max(64, 2 x max_workers) of them (enough to keep the workers busy across a round
trip). Until a worker takes it, a task can be cancelled, wherever it waits: in ``overflow`` it is dropped; in
``tasks`` its claim slot (``_Claims``) decides, by one compare-and-swap in shared memory, whether the worker
or the cancel gets it; a worker that loses skips it and says so (_SKIPPED).

Worker lifecycle: every worker that stops on purpose (``tasks`` closed at shutdown, or max_tasks_per_child
reached) sends a _BYE result first. A worker found dead without one (a crash, os._exit, a signal) breaks the
pool, as in ProcessPoolExecutor: every pending future fails with BrokenProcessPool, the other workers are
terminated, and submit raises BrokenProcessPool. Workers also leave when the parent process is gone.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import mmap
import pickle
import secrets
import select as select_mod
import struct
import threading
import time
import traceback
import types
import weakref
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from typing import Any, Callable, ParamSpec, TypeVar

from ._core import ChannelClosed, WouldBlock, _shm_cas, _shm_load, _shm_store
from ._future import Future
from ._pool import _StreamingMap
from ._process import ProcessChannel, _tracker

T = TypeVar("T")
P = ParamSpec("P")

__all__ = ["BrokenProcessPool", "ProcessPool"]

_TASK_CLAIM = struct.Struct("<qq")
_TASK = struct.Struct("<qqqIB")   # task id, claim slot, claim token (both set at hand-over), length of the
                                #   pickled callable, whether workers may cache it
_QUEUED, _RUNNING, _CANCELLED = 0, 1, 2  # a claim slot holds token * 4 + one of these
_FN_CACHE_MAX = 256             # callables a worker keeps unpickled, at most...
_FN_CACHE_BYTES = 1 << 20       # ...and their pickles' bytes, at most
_FN_INLINE_MAX = 64 * 1024      # a larger pickled callable travels with the arguments (_apply)
_BY_NAME = (types.FunctionType, types.BuiltinFunctionType, type)
_NO_ARGS = pickle.dumps(((), {}), protocol=5)
_RES = struct.Struct("<qB")
_OK, _ERR, _BYE, _INIT_FAILED, _WAKE, _SKIPPED = range(6)
_INLINE_MAX = 256 * 1024       # a pickle larger than this travels in a shared-memory block of its own
_POLL_S = 0.05                 # the manager checks the workers at least this often
_DRAIN = 64                    # results the manager takes per wake-up before it looks at anything else
_PARENT_CHECK_S = 0.5          # an idle worker checks that its parent is alive this often
_EXIT_GRACE_S = 10.0           # a worker that said goodbye and has not ended after this long is killed
_BUFFER = (1 << 20) + 4096
_CAP_MAX = 1 << 16             # the channels hold at most this many messages, whatever max_workers is
_LOGGER = logging.getLogger("concurrent.futures")

_live: weakref.WeakSet[_State] = weakref.WeakSet()
_live_lock = threading.Lock()
_exit_hook_installed = False


# ---- payloads ---------------------------------------------------------------------------------------------

class _Big:
    """A pickle too large for the channel ring: the name of the shared-memory block that holds it."""

    __slots__ = ("name", "size")

    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Big, (self.name, self.size))

    @staticmethod
    def store(data: bytes) -> bytes:
        from multiprocessing import shared_memory

        shm = shared_memory.SharedMemory(create=True, size=len(data))
        try:
            # Reserve the pages: on a small /dev/shm a write to a page that finds no room kills the process
            # with SIGBUS; this raises ENOSPC instead (the task's future fails with it).
            fd = getattr(shm, "_fd", -1)
            if fd >= 0:
                try:
                    os.posix_fallocate(fd, 0, len(data))
                except OSError as e:
                    shm.unlink()
                    if e.errno == errno.ENOSPC:
                        raise OSError(errno.ENOSPC, f"no space left in /dev/shm for a value of {len(data)} "
                                      "bytes sent to a worker: free space there or enlarge it "
                                      "(docker run --shm-size=...)") from None
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
            assert shm.buf is not None
            shm.buf[: len(data)] = data
            return pickle.dumps(_Big(shm.name, len(data)), protocol=5)
        finally:
            shm.close()

    def take(self) -> bytes:
        from multiprocessing import shared_memory

        shm = shared_memory.SharedMemory(name=self.name)
        try:
            assert shm.buf is not None
            return bytes(shm.buf[: self.size])
        finally:
            shm.close()
            shm.unlink()

    def discard(self) -> None:
        try:
            self.take()
        except OSError:
            pass


def _dumps(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=5)
    return data if len(data) <= _INLINE_MAX else _Big.store(data)


def _loads(data: bytes | memoryview) -> Any:
    obj = pickle.loads(data)
    if type(obj) is _Big:
        obj = pickle.loads(obj.take())
    return obj


def _args_part(task: bytes | bytearray) -> memoryview:
    return memoryview(task)[_TASK.size + _TASK.unpack_from(task)[3]:]


def _discard_payload(data: bytes | memoryview) -> None:
    """Free the shared-memory block of a message that will never be read."""
    try:
        obj = pickle.loads(data)
    except Exception:  # noqa: BLE001
        return
    if type(obj) is _Big:
        obj.discard()


def _rebuild_exc(exc: BaseException, tb: str) -> BaseException:
    # The standard library's class, so code that checks for it (CPython's own tests do) finds it.
    exc.__cause__ = _RemoteTraceback(tb)  # type: ignore[arg-type]  # (it takes the text)
    return exc


class _ExceptionWithTraceback:
    """An exception and its worker-side traceback text: it unpickles as the exception with the text as its
    __cause__ (what ProcessPoolExecutor does)."""

    def __init__(self, exc: BaseException, text: str) -> None:
        self.exc, self.tb = exc, f'\n"""\n{text}"""'

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_exc, (self.exc, self.tb))


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except BaseException:  # noqa: BLE001  (a __str__ that raises)
        return f"<{type(obj).__name__} object: str() failed>"


def _error_payload(exc: BaseException) -> bytes:
    """The pickled exception with its traceback text; never raises (the worker must live on): one that does
    not pickle is replaced by a RuntimeError naming its type, even if its str() raises too."""
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:  # noqa: BLE001
        text = f"{type(exc).__qualname__} (its traceback could not be formatted)\n"
    try:
        return _dumps(_ExceptionWithTraceback(exc, text))
    except BaseException as e:  # noqa: BLE001  (the exception itself does not pickle: send a substitute)
        substitute = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {_safe_str(exc)} "
                                  f"(the exception could not be pickled: {_safe_str(e)})")
        try:
            return _dumps(_ExceptionWithTraceback(substitute, text))
        except BaseException:  # noqa: BLE001  (the text itself: cannot happen, but the worker must live on)
            return _dumps(RuntimeError(f"{type(exc).__qualname__} (could not be pickled)"))


# ---- the worker process --------------------------------------------------------------------------------

class _ParentPipe:
    """The read end of a pipe whose write end only the pool's process holds: it reads EOF once that process
    has exited, zombie or not (``os.kill(pid, 0)`` takes a zombie for alive; ``getppid()`` is the forkserver
    under forkserver). Passed to workers as an argument: a forked one inherits the descriptor, a spawned or
    forkserver one gets a duplicate (multiprocessing's DupFd, during the start)."""

    def __init__(self, fd: int, write_fd: int = -1) -> None:
        self.fd = fd
        self.write_fd = write_fd  # known only in the pool's process (a forked worker closes its copy)

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing import reduction

        return (_ParentPipe._rebuild, (reduction.DupFd(self.fd),))

    @staticmethod
    def _rebuild(dup: Any) -> _ParentPipe:
        return _ParentPipe(dup.detach())

    def parent_alive(self) -> bool:
        poller = select_mod.poll()
        poller.register(self.fd, select_mod.POLLIN)
        try:
            return not poller.poll(0)  # readable or hung up: EOF, every write end is closed
        except OSError:
            return False


class _Claims:
    """Who gets a task that waits in the workers' channel: its worker, or a cancel. One int64 slot per task
    handed over, in shared memory; the parent gives a slot out at hand-over and takes it back only when the
    task's result (or the worker's word that it skipped it) has arrived, so a slot is never reused while a
    worker may still look at it. The slot holds token * 4 + _QUEUED when the task is handed over (the token
    is new at every attempt, so a cancel that read an attempt that failed can never match a later task in
    that slot); the worker that takes it swaps that for _RUNNING, a cancel() for _CANCELLED, with one atomic
    compare-and-swap, so exactly one of them wins. That lets a task in the channel still be cancelled (as
    ProcessPoolExecutor's queued tasks can be) without keeping the channel short."""

    def __init__(self, name: str, nslots: int, mem: mmap.mmap) -> None:
        self.name, self.nslots, self.mem = name, nslots, mem

    @classmethod
    def create(cls, nslots: int) -> _Claims:
        name = f"/gilfree-{os.getpid()}-{secrets.token_hex(8)}-claims"
        path = "/dev/shm" + name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, 8 * nslots)
            try:
                os.posix_fallocate(fd, 0, 8 * nslots)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            mem = mmap.mmap(fd, 8 * nslots)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        _tracker("register", name)
        for i in range(nslots):  # no slot may look like seq 0 queued
            _shm_store(mem, i, -1)
        return cls(name, nslots, mem)

    @classmethod
    def attach(cls, name: str, nslots: int) -> _Claims:
        fd = os.open("/dev/shm" + name, os.O_RDWR)
        try:
            return cls(name, nslots, mmap.mmap(fd, 8 * nslots))
        finally:
            os.close(fd)

    def queue(self, slot: int, token: int) -> None:
        _shm_store(self.mem, slot, token * 4 + _QUEUED)

    def retract(self, slot: int) -> None:
        _shm_store(self.mem, slot, -1)  # the hand-over failed: nothing waits under this token

    def take(self, slot: int, token: int) -> bool:
        return bool(_shm_cas(self.mem, slot, token * 4 + _QUEUED, token * 4 + _RUNNING))

    def cancel(self, slot: int, token: int) -> bool:
        """True if the task will not run under this token (cancelled now, or before). False if a worker took
        it, or the hand-over failed (the task waits in the parent again: to be safe, say it may run)."""
        mine = token * 4 + _CANCELLED
        return bool(_shm_cas(self.mem, slot, token * 4 + _QUEUED, mine)) or _shm_load(self.mem, slot) == mine

    def release(self, unlink: bool) -> None:
        try:
            self.mem.close()
        except BufferError:  # a cancel() racing the release holds a view: the mapping goes with it
            pass
        if unlink:
            try:
                os.unlink("/dev/shm" + self.name)
            except FileNotFoundError:
                pass
            _tracker("unregister", self.name)


class _TaskFuture(Future[T]):
    """A ProcessPool task's future: cancel() still works while the task waits in the workers' channel, by
    winning its claim slot before a worker does (see _Claims)."""

    __module__ = "gilfree"
    _claim: tuple[_Claims, int, int] | None = None  # (claims, slot, token) once handed over to the channel
    _cancel_requested = False

    def cancel(self) -> bool:
        if self.done():
            return super().cancel()
        # Dekker with _hand_over: this writes the request, then reads _claim; the hand-over writes _claim, then
        # reads the request. At least one of them sees the other: the hand-over drops the task, or this
        # contends for the slot.
        self._cancel_requested = True
        claim = self._claim
        if claim is not None:
            claims, slot, token = claim
            try:
                if not claims.cancel(slot, token):
                    return False  # a worker took it: it runs
            except ValueError:  # the pool is gone (mapping closed): every task of it has finished
                pass
        return super().cancel()


def _apply(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A large callable (a bound method of a model, a partial holding an array) travels with the arguments,
    in a shared-memory block of its own when large, and is not cached by the worker."""
    return fn(*args, **kwargs)


def _worker(tasks: ProcessChannel[Any], results: ProcessChannel[Any], parent: _ParentPipe, claims_name: str,
            nslots: int, initializer: Callable[..., object] | None, initargs: tuple[Any, ...],
            max_tasks: int | None) -> None:
    if parent.write_fd >= 0:  # forked: this copy of the write end would keep the pipe open
        try:
            os.close(parent.write_fd)
        except OSError:
            pass
    pid = os.getpid()
    th, rh = tasks._h, results._h
    claims = _Claims.attach(claims_name, nslots)

    def put(tid: int, kind: int, payload: bytes) -> bool:
        data = _RES.pack(tid, kind) + payload
        while True:
            try:
                rh.send_bytes(data, _PARENT_CHECK_S)
                return True
            except TimeoutError:
                if not parent.parent_alive():
                    return False
            except ChannelClosed:
                return False
            except KeyboardInterrupt:  # the result must not be lost to a Ctrl-C meant for the parent
                continue

    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as e:  # noqa: BLE001
            _LOGGER.critical("Exception in initializer:", exc_info=True)
            # The parent waits for this process to exit on its own (its logging queues flush at exit)
            # before it stops the others.
            put(-1, _INIT_FAILED, pickle.dumps((pid, f"{type(e).__name__}: {_safe_str(e)}")))
            return
    done = 0
    fns: dict[bytes, Any] = {}  # callables that pickle by name (the parent says so), bounded in bytes
    fns_bytes = 0
    while max_tasks is None or done < max_tasks:
        try:
            data = th.recv_bytes(_PARENT_CHECK_S)
        except TimeoutError:
            if not parent.parent_alive():
                return
            continue
        except ChannelClosed:
            break
        except KeyboardInterrupt:  # Ctrl-C in the terminal reaches the workers too: the parent decides
            continue
        tid, slot, token, n, cacheable = _TASK.unpack_from(data)
        if not claims.take(slot, token):  # cancelled while it waited in the channel: it never runs
            _discard_payload(memoryview(data)[_TASK.size + n:])
            del data
            if not put(tid, _SKIPPED, b""):
                return
            continue
        try:
            key = data[_TASK.size:_TASK.size + n]
            fn = fns.get(key) if cacheable else None
            if fn is None:
                fn = pickle.loads(key)
                if cacheable:
                    if len(fns) >= _FN_CACHE_MAX or fns_bytes + len(key) > _FN_CACHE_BYTES:
                        fns.clear()
                        fns_bytes = 0
                    fns[key] = fn
                    fns_bytes += len(key)
            del key
            args, kwargs = _loads(memoryview(data)[_TASK.size + n:])
            del data
            r = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001  (the task's failure is its future's)
            payload, kind = _error_payload(e), _ERR
            del e
        else:
            try:
                payload, kind = _dumps(r), _OK
            except BaseException as e:  # noqa: BLE001  (the result does not pickle)
                payload, kind = _error_payload(e), _ERR
                del e
            del r
        if not put(tid, kind, payload):
            return
        done += 1
        fn = args = kwargs = None
    put(-1, _BYE, pickle.dumps(pid))


# ---- the parent side -------------------------------------------------------------------------------------

class _State:
    """Everything the manager thread needs; the ProcessPool object itself may be collected while it runs."""

    def __init__(self, max_workers: int, ctx: Any, initializer: Callable[..., object] | None,
                 initargs: tuple[Any, ...], max_tasks: int | None) -> None:
        self.max_workers = max_workers
        self.ctx = ctx
        self.initializer, self.initargs, self.max_tasks = initializer, initargs, max_tasks
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.pending: dict[int, Future[Any]] = {}
        self.overflow: collections.deque[tuple[int, _TaskFuture[Any], bytearray]] = collections.deque()
        self.next_tid = 0
        self.fn_cache: dict[Any, bytes] = {}  # functions that pickle by name (a bound method would not)
        self.shutting_down = False
        self.broken: str | None = None
        self.procs: dict[int, Any] = {}
        self.procs_lock = threading.RLock()  # procs changes in submit (growth) and the manager thread
        self.said_bye: set[int] = set()
        self.bye_at: dict[int, float] = {}  # when each worker that is still there said goodbye
        self.manager: threading.Thread | None = None
        self.tasks: ProcessChannel[Any] | None = None
        self.results: ProcessChannel[Any] | None = None
        self.released = False
        self.parent: _ParentPipe | None = None  # made with the channels
        self.init_failed: set[int] = set()  # workers whose initializer failed: they exit on their own
        self.claims: _Claims | None = None  # made with the channels
        self.free_slots: list[int] = []  # claim slots not in use (filled with the claims)
        self.slot_of: dict[int, int] = {}  # task id -> its claim slot, from hand-over to result
        self.token = 0  # hand-over attempts so far: the next attempt's claim token

    # -- submitting (any thread) --

    def start(self) -> None:
        """Under the lock: create the channels, the first worker and the manager (on the first submit). More
        workers start as tasks wait for one (grow), up to max_workers. If any of it fails, nothing is left
        (no process, no channel), the pool is broken with the reason, and the error is raised."""
        try:
            r, w = os.pipe()  # both ends close-on-exec; workers get a duplicate of r
            self.parent = _ParentPipe(r, w)
            self.tasks = ProcessChannel(_task_capacity(self.max_workers), buffer_size=_BUFFER)
            self.claims = _Claims.create(2 * _task_capacity(self.max_workers))  # >= channel + workers
            self.free_slots = list(range(self.claims.nslots))
            self.results = ProcessChannel(min(_CAP_MAX, max(64, 4 * self.max_workers)), buffer_size=_BUFFER)
            self.spawn()
            manager = threading.Thread(target=_manage, args=(self,), name="gilfree-processpool-manager",
                                       daemon=True)
            manager.start()
            self.manager = manager
        except BaseException as e:
            self.broken = f"The process pool could not start: {type(e).__name__}: {_safe_str(e)}"
            self.terminate_workers()
            self._release_channels_locked()
            raise

    def spawn(self) -> None:
        assert self.tasks is not None and self.results is not None and self.parent is not None
        assert self.claims is not None
        # Not daemonic: a task may start processes of its own (multiprocessing refuses that in a daemonic
        # one). The workers still leave when this process is gone: they watch the parent pipe.
        p = self.ctx.Process(target=_worker, args=(self.tasks, self.results, self.parent, self.claims.name,
                                                   self.claims.nslots, self.initializer, self.initargs,
                                                   self.max_tasks), daemon=False,
                             name=f"gilfree-processpool-worker-{len(self.procs)}")
        p.start()
        with self.procs_lock:
            self.procs[p.pid] = p

    def check_process(self) -> None:
        if os.getpid() != self.pid:
            raise RuntimeError("this ProcessPool belongs to the process that made it (pid "
                               f"{self.pid}); a forked child cannot use it: make a new pool there")

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        self.check_process()
        f: _TaskFuture[Any] = _TaskFuture()
        with self.lock:
            if self.broken is not None:
                raise BrokenProcessPool(self.broken)
            if self.shutting_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self.manager is None:
                self.start()
            tid = self.next_tid
            self.next_tid = tid + 1
        try:
            data = self.pack_task(tid, fn, args, kwargs)
        except BaseException as e:  # noqa: BLE001  (as ProcessPoolExecutor: the future carries the error)
            f.set_exception(e)
            return f
        with self.lock:
            if self.broken is not None:  # broke while this one was pickled: it was submitted before that
                _discard_payload(_args_part(data))
                f.set_exception(BrokenProcessPool(self.broken))
                return f
            if self.shutting_down:
                _discard_payload(_args_part(data))
                raise RuntimeError("cannot schedule new futures after shutdown")
            self.pending[tid] = f
            try:
                if self.overflow or not self._hand_over(tid, f, data):
                    self.overflow.append((tid, f, data))
            except BaseException as e:  # noqa: BLE001  (cannot happen: tasks fit; never a stuck future)
                self.pending.pop(tid, None)
                _discard_payload(_args_part(data))
                if not f.done():
                    f.set_exception(e)
                return f
            grow = len(self.procs) < self.max_workers and len(self.pending) > len(self.procs)
        if grow:
            # Start the workers the tasks need now, as ProcessPoolExecutor's submit does (so _processes
            # counts them at once); with no process left to start, the manager goes on with those there are.
            self.grow()
        return f

    def grow(self) -> None:
        """Submitters and the manager thread: start workers while tasks outnumber them, up to max_workers
        (on demand, as ProcessPoolExecutor does for spawn and forkserver)."""
        # (also while shutting down: tasks submitted before the shutdown still deserve every worker)
        with self.procs_lock:
            while self.broken is None and not self.released and len(self.procs) < self.max_workers \
                    and len(self.pending) > len(self.procs):
                try:
                    self.spawn()
                except Exception as e:  # noqa: BLE001  (no more processes: go on with those there are)
                    if not self.procs:
                        self.break_pool(f"No worker process could be started: {e!r}")
                    return

    def pack_task(self, tid: int, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> bytearray:
        """A callable that pickles by name (a function, a class, a module's builtin) is pickled once per pool
        and may be cached by the workers. Any other (a bound method, a partial) is pickled at every submit
        and not cached (it may hold large data that differs each time); one larger than _FN_INLINE_MAX
        travels with the arguments, which go in a shared-memory block of their own when large."""
        by_name = type(fn) in _BY_NAME and (type(fn) is not types.BuiltinFunctionType
                                            or isinstance(fn.__self__, types.ModuleType))
        fb = self.fn_cache.get(fn) if by_name else None
        if fb is None:
            fb = pickle.dumps(fn, protocol=5)
            if by_name:
                if len(self.fn_cache) >= _FN_CACHE_MAX:
                    self.fn_cache.clear()
                self.fn_cache[fn] = fb
        if len(fb) > _FN_INLINE_MAX:
            fb = self.fn_cache.get(_apply) or pickle.dumps(_apply, protocol=5)
            self.fn_cache[_apply] = fb
            rest, cacheable = _dumps(((fn, args, kwargs), {})), 1
        else:
            rest, cacheable = (_NO_ARGS if not args and not kwargs else _dumps((args, kwargs))), 1 if by_name else 0
        data = bytearray(_TASK.pack(tid, -1, -1, len(fb), cacheable))  # the claim is set at hand-over
        data += fb
        data += rest
        return data

    def _drop(self, tid: int, data: bytearray) -> bool:
        """A task cancelled before any worker could take it: forget it (the lock is held). True."""
        del self.pending[tid]
        _discard_payload(_args_part(data))
        return True

    def _hand_over(self, tid: int, f: _TaskFuture[Any], data: bytearray) -> bool:
        """Put one task into ``tasks`` (the lock is held). False if it is full (it stays pending). A task
        stays cancellable in the channel: its future is not marked running; a worker claims it (_Claims)."""
        if f._cancel_requested or f.done():  # cancelled while it waited here: it never runs
            return self._drop(tid, data)
        assert self.tasks is not None and self.claims is not None
        claims = self.claims
        if not self.free_slots:
            return False  # every slot's task is in the channel or running: the channel is as good as full
        slot, token = self.free_slots.pop(), self.token
        self.token = token + 1  # never reused: a cancel() that read a failed attempt cannot hit a later one
        claims.queue(slot, token)
        f._claim = (claims, slot, token)
        if f._cancel_requested:  # (see _TaskFuture.cancel) a cancel that did not see _claim: drop it here
            claims.retract(slot)
            self.free_slots.append(slot)
            return self._drop(tid, data)
        _TASK_CLAIM.pack_into(data, 8, slot, token)
        self.slot_of[tid] = slot  # before the send: its result may be completed before this returns
        try:
            self.tasks._h.send_bytes(data, None, True)
        except WouldBlock:
            del self.slot_of[tid]
            f._claim = None
            claims.retract(slot)
            self.free_slots.append(slot)
            return False
        return True

    def feed(self) -> None:
        """Move waiting tasks into ``tasks`` while it has room (manager thread)."""
        with self.lock:
            while self.overflow:
                tid, f, data = self.overflow.popleft()
                if not self._hand_over(tid, f, data):
                    self.overflow.appendleft((tid, f, data))
                    return

    def request_shutdown(self, cancel_futures: bool) -> None:
        if os.getpid() != self.pid:
            return  # a forked child's copy: the pool, its workers and its channels are the parent's
        with self.lock:
            self.shutting_down = True
            pending = list(self.pending.values()) if cancel_futures else []
        # Every task not yet taken by a worker is cancelled: those waiting here and those in the channel
        # (a worker skips them), as ProcessPoolExecutor cancels what waits in its queues. Newest first, so
        # the workers do not start the last ones while the first are being cancelled.
        for f in reversed(pending):
            f.cancel()
        self.wake()

    def wake(self) -> None:
        with self.lock:  # release_channels() takes it too: no send on a released handle
            if self.results is not None and not self.released:
                try:
                    self.results._h.send_bytes(_RES.pack(-1, _WAKE), None, True)
                except (WouldBlock, ChannelClosed):
                    pass  # full: the manager is awake anyway; closed: it is finishing

    # -- the manager thread --

    def complete(self, data: bytes) -> None:
        tid, kind = _RES.unpack_from(data)
        if tid < 0:
            if kind == _BYE:
                pid = pickle.loads(memoryview(data)[_RES.size:])
                self.said_bye.add(pid)
                self.bye_at[pid] = time.monotonic()
            elif kind == _INIT_FAILED:
                pid, why = pickle.loads(memoryview(data)[_RES.size:])
                self.init_failed.add(pid)
                self.break_pool(f"A child process terminated abruptly: its initializer raised {why}")
            return
        # The task is past its claim: its slot may serve another. (No lock: dict.pop and list.append are
        # atomic, also on free-threaded builds; only _hand_over, under the lock, takes slots out.)
        slot = self.slot_of.pop(tid, None)
        if slot is not None:
            self.free_slots.append(slot)
        if kind == _SKIPPED:
            self.pending.pop(tid, None)  # cancelled in the channel: its future is cancelled already
            return
        f = self.pending.pop(tid, None)
        try:
            value = _loads(memoryview(data)[_RES.size:])
        except BaseException as e:  # noqa: BLE001  (the result does not unpickle here)
            value, kind = e, _ERR
        if f is None or f.done():
            return  # the pool broke meanwhile
        if kind == _OK:
            f.set_result(value)
        else:
            f.set_exception(value)

    def check_workers(self) -> None:
        """Account for workers that ended: replaced if they retired, the pool broken if they died."""
        with self.procs_lock:
            if not self.procs:
                return
            sentinels = {p.sentinel: pid for pid, p in self.procs.items()}
            # A worker that said goodbye owes nothing more. If it does not end, its exit is stuck (in a forked
            # child, an exit hook may wait on a lock that a thread of this process held at the fork): kill
            # it, or the shutdown would wait for ever.
            now = time.monotonic()
            for pid, at in list(self.bye_at.items()):
                p = self.procs.get(pid)
                if p is None:
                    del self.bye_at[pid]
                elif now - at > _EXIT_GRACE_S:
                    del self.bye_at[pid]
                    _LOGGER.warning("A process pool worker (pid %d) had not exited %.0f s after its last task; "
                                    "killed.", pid, _EXIT_GRACE_S)
                    p.kill()
        ended = multiprocessing.connection.wait(list(sentinels), timeout=0)
        if not ended:
            return
        self.drain_results()  # a worker's last words (its _BYE) were sent before it ended
        retired = 0
        for s in ended:
            pid = sentinels[s]
            with self.procs_lock:
                p = self.procs.pop(pid, None)
            if p is None:  # the pool broke meanwhile (drain_results above): break_pool took them all
                continue
            p.join()
            if pid in self.said_bye:
                self.said_bye.discard(pid)
                self.bye_at.pop(pid, None)
                retired += 1
            elif self.broken is None:
                self.break_pool("A process in the process pool was terminated abruptly while the future was "
                                f"running or pending (pid {pid}, exit code {p.exitcode}).")
        if self.broken is not None or not retired:
            return
        # Replace workers that retired (max_tasks_per_child). Once shutting down, the workers also leave
        # when the task channel runs dry: then they are replaced only while tasks still wait in it.
        queued = self.tasks is not None and len(self.tasks) > 0
        need = retired if not self.shutting_down or queued else 0
        for _ in range(need):
            try:
                self.spawn()
            except RuntimeError as e:  # at interpreter exit no process can be started any more (3.12+)
                self.break_pool(f"A worker that reached max_tasks_per_child could not be replaced: {e}")
                return

    def drain_results(self) -> None:
        assert self.results is not None
        while True:
            try:
                data = self.results._h.recv_bytes(None, True)
            except (WouldBlock, ChannelClosed):
                return
            self.complete(data)

    def break_pool(self, why: str) -> None:
        with self.lock:
            if self.broken is not None:
                return
            self.broken = why
            failed = list(self.pending.values())
            self.pending.clear()
            dropped = [data for _, _, data in self.overflow]
            self.overflow.clear()
        for task in dropped:
            _discard_payload(_args_part(task))
        assert self.tasks is not None and self.results is not None
        self.tasks.close()
        self.terminate_workers()
        self.results.close()
        while True:  # tasks nobody will run: free their shared-memory blocks
            try:
                data = self.tasks._h.recv_bytes(None, True)
                _discard_payload(_args_part(data))
            except (WouldBlock, ChannelClosed):
                break
        for f in failed:
            if not f.done():
                e = BrokenProcessPool(why)
                try:
                    f.set_exception(e)
                except cf.InvalidStateError:
                    pass

    def terminate_workers(self) -> None:
        # A worker whose initializer failed exits on its own once it has reported it; give it time, so what
        # it logged (through a QueueHandler, say) is flushed, as ProcessPoolExecutor does.
        deadline = time.monotonic() + 5.0
        with self.procs_lock:
            procs = dict(self.procs)
            self.procs.clear()
        for pid in list(self.init_failed):
            p = procs.get(pid)
            if p is not None:
                p.join(max(0.0, deadline - time.monotonic()))
        self.init_failed.clear()
        for p in procs.values():
            if p.exitcode is None:
                p.terminate()
        for p in procs.values():
            p.join(1.0)
            if p.exitcode is None:
                p.kill()
                p.join()

    def release_channels(self) -> None:
        with self.lock:
            self._release_channels_locked()

    def _release_channels_locked(self) -> None:
        self.released = True
        for ch in (self.tasks, self.results):
            if ch is not None:
                ch.close()
                ch._release(force=True)  # every worker is gone (one killed may still count a reference)
        if self.claims is not None:
            self.claims.release(unlink=True)
            self.claims = None
        if self.parent is not None:  # the workers see EOF on their parent pipe
            for fd in (self.parent.write_fd, self.parent.fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.parent = None

    def idle_and_done(self) -> bool:
        with self.lock:
            return self.shutting_down and not self.pending and not self.overflow


def _manage(st: _State) -> None:
    assert st.tasks is not None and st.results is not None
    recv = st.results._h.recv_bytes
    next_check = time.monotonic() + _POLL_S
    tasks_closed = False
    try:
        while st.broken is None:
            try:
                data = recv(_POLL_S)
            except TimeoutError:
                data = None
            got = data is not None
            if got:
                st.complete(data)  # type: ignore[arg-type]
                for _ in range(_DRAIN):  # what else has arrived, before the periodic checks
                    try:
                        data = recv(None, True)
                    except (WouldBlock, ChannelClosed):  # closed: the pool broke
                        break
                    st.complete(data)
            data = None  # no reference to a result once its future has it
            if len(st.procs) < st.max_workers:
                st.grow()
            if st.overflow:
                st.feed()
            now = time.monotonic() if got else next_check
            if now >= next_check:
                next_check = now + _POLL_S
                st.check_workers()
            if st.shutting_down and not tasks_closed and not st.overflow:
                st.tasks.close()  # the workers finish what is there, say goodbye and leave
                tasks_closed = True
            if tasks_closed:
                st.check_workers()
                if not st.procs:
                    st.drain_results()
                    if st.pending and st.broken is None:
                        st.break_pool("The process pool's workers ended before every task had finished.")
                    break
    except BaseException:  # noqa: BLE001  (a bug here must not leave futures waiting forever)
        # Nothing escapes the pool's own thread: the futures carry the reason.
        try:
            st.break_pool("The process pool's manager thread failed:\n" + traceback.format_exc())
        except BaseException:  # noqa: BLE001
            pass
    finally:
        if st.broken is not None:
            st.terminate_workers()
        st.release_channels()


def _shutdown_all_at_exit() -> None:
    with _live_lock:
        states = list(_live)
    for st in states:
        if st.pid == os.getpid():
            st.request_shutdown(False)
    for st in states:
        if st.pid == os.getpid() and st.manager is not None:
            st.manager.join()


def _task_capacity(workers: int) -> int:
    return min(_CAP_MAX, max(64, 2 * workers))


def _check_int_or_none(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
    return value


class ProcessPool(_StreamingMap, cf.Executor):
    """A concurrent.futures.Executor whose workers are processes, fed through shared-memory ProcessChannels.

    ``ProcessPool(max_workers=None, mp_context=None, initializer=None, initargs=(), *,
    max_tasks_per_child=None)``, as ProcessPoolExecutor: ``max_workers`` defaults to the CPU count;
    ``mp_context`` is a multiprocessing context (default: the platform's start method; "spawn" when
    ``max_tasks_per_child`` is set, which cannot be combined with "fork"); ``initializer(*initargs)`` runs
    in each worker first. Workers start on demand: the first with the first submit, more while tasks
    outnumber them, up to ``max_workers``.

    - ``submit`` returns a gilfree.Future (works with ``concurrent.futures.wait``/``as_completed`` and
      ``asyncio.wrap_future``). Arguments, results and exceptions are pickled; a task that cannot be pickled
      fails its future. An exception keeps the worker's traceback as its ``__cause__``.
    - ``map(fn, *iterables, timeout=None, chunksize=1, ordered=True, buffersize=None, ctx=None)``: ordered,
      every item submitted at once (lazy with ``buffersize=N``: at most N chunks in flight), as ThreadPool.map.
    - ``shutdown(wait=True, *, cancel_futures=False)``: submitted tasks finish unless cancelled; idempotent.
      ``cancel()`` stops a task until a worker takes it, also while it waits in the workers' channel (which
      holds max(64, 2 x max_workers) tasks); ``running()`` stays False until its result arrives.
    - A worker that dies (a crash, ``os._exit``, a signal) breaks the pool, as with ProcessPoolExecutor:
      pending futures fail with ``BrokenProcessPool`` and later submits raise it. Nothing hangs.
    """

    __module__ = "gilfree"

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., object] | None = None, initargs: tuple[Any, ...] = (), *,
                 max_tasks_per_child: int | None = None) -> None:
        global _exit_hook_installed
        workers = _check_int_or_none(max_workers, "max_workers")
        if workers is None:
            workers = getattr(os, "process_cpu_count", os.cpu_count)() or 1
        elif workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        max_tasks = _check_int_or_none(max_tasks_per_child, "max_tasks_per_child")
        if max_tasks is not None and max_tasks < 1:
            raise ValueError("max_tasks_per_child must be >= 1")
        if mp_context is None:
            mp_context = multiprocessing.get_context("spawn" if max_tasks is not None else None)
        elif not (hasattr(mp_context, "Process") and hasattr(mp_context, "get_start_method")):
            raise TypeError(f"mp_context must be a multiprocessing context, not {type(mp_context).__name__}")
        if max_tasks is not None and mp_context.get_start_method() == "fork":
            raise ValueError("max_tasks_per_child is incompatible with the 'fork' multiprocessing start "
                             "method; supply a different mp_context.")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        self._s = _State(workers, mp_context, initializer, initargs, max_tasks)
        self._mp_context = mp_context
        with _live_lock:
            _live.add(self._s)
            if not _exit_hook_installed:
                threading._register_atexit(_shutdown_all_at_exit)  # type: ignore[attr-defined]
                _exit_hook_installed = True
        weakref.finalize(self, _State.request_shutdown, self._s, False)

    @property
    def max_workers(self) -> int:
        return self._s.max_workers

    @property
    def _max_workers(self) -> int:
        """ProcessPoolExecutor's name for max_workers."""
        return self._s.max_workers

    @property
    def _processes(self) -> dict[int, Any]:
        """ProcessPoolExecutor's view: the worker processes by pid."""
        with self._s.procs_lock:
            return dict(self._s.procs)

    @property
    def _broken(self) -> str | bool:
        """ProcessPoolExecutor's view: False, or why the pool is broken (code in the wild reads it)."""
        return self._s.broken or False

    @property
    def _executor_manager_thread(self) -> threading.Thread | None:
        """ProcessPoolExecutor's name for the thread that completes the futures (None before the first
        submit): joining it waits until the pool has finished."""
        return self._s.manager

    def __repr__(self) -> str:
        state = ("broken" if self._s.broken is not None else
                 "shut down" if self._s.shutting_down else "running")
        return (f"<gilfree.ProcessPool max_workers={self._s.max_workers} "
                f"{self._mp_context.get_start_method()} {state}>")

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a worker process; returns its gilfree.Future."""
        if not callable(fn):
            raise TypeError(f"submit() argument 'fn' must be callable, not {type(fn).__name__}")
        return self._s.submit(fn, args, kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks; the submitted ones finish (``cancel_futures=True`` cancels those not yet handed to
        a worker). ``wait=True`` returns once every worker has ended. Idempotent."""
        st = self._s
        st.check_process()
        st.request_shutdown(cancel_futures)
        if wait and st.manager is not None and st.manager is not threading.current_thread():
            st.manager.join()

    def _inline_runner(self) -> None:
        return None

