"""gilfree: Go's concurrency model for Python, native and free of the GIL.

Channels with select, a worker pool and futures, written in C on pthreads: every wait releases the GIL.
"""

from __future__ import annotations

try:
    from . import _core
except ImportError as _e:  # pragma: no cover - exercised by a test in a fresh interpreter
    if not (isinstance(_e, ModuleNotFoundError) or "cannot import name '_core'" in str(_e)):
        raise  # the extension is there and refused to load (a subinterpreter, say): its own message
    raise ImportError(
        "gilfree's C extension (gilfree._core) is not built here: this is the source tree's python/ directory, "
        "or an install without it. Run `pip install .` (or `python3 dev.py test`, which builds it into "
        "build/) and import gilfree from there.") from None
from ._channel import Channel
from ._context import Cancelled, Context, DeadlineExceeded
from ._core import CLOSED, ChannelClosed, WouldBlock, default, select
from ._future import Future, as_completed, first, gather, wait
from ._netpoll import READ, WRITE, Poller, readable, wait_readable, wait_writable, writable
from ._process import ProcessChannel
from ._procpool import BrokenProcessPool, ProcessPool
from .queue import DurableQueue, LeaseLost
from ._parallel import KernelError, gil_enabled, parallel_for
from ._pool import ThreadPool
from ._timer import Ticker, after, tick
from .actor import Actor, ActorRef, ActorStopped, Supervisor
from .pipeline import Pipeline, broadcast, merge
from . import kernels, reference, rx  # noqa: E402  (after the pool: kernels use it)

__version__ = "0.2.0.dev0"

__all__ = [
    "Actor",
    "ActorRef",
    "ActorStopped",
    "BrokenProcessPool",
    "CLOSED",
    "Cancelled",
    "Channel",
    "ChannelClosed",
    "Context",
    "DeadlineExceeded",
    "DurableQueue",
    "Future",
    "KernelError",
    "LeaseLost",
    "Pipeline",
    "Poller",
    "ProcessChannel",
    "ProcessPool",
    "READ",
    "Supervisor",
    "ThreadPool",
    "Ticker",
    "WRITE",
    "WouldBlock",
    "after",
    "broadcast",
    "as_completed",
    "default",
    "kernels",
    "merge",
    "first",
    "parallel_for",
    "readable",
    "gather",
    "gil_enabled",
    "select",
    "tick",
    "wait",
    "wait_readable",
    "wait_writable",
    "writable",
]

del _core
