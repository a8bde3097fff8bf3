"""gilfree: Go's concurrency model for Python, native and free of the GIL.

Channels with select, written in C on pthreads: every wait releases the GIL.
"""

from __future__ import annotations

from . import _core
from ._channel import Channel
from ._core import CLOSED, ChannelClosed, WouldBlock, default, select
from ._timer import Ticker, after, tick

__version__ = "0.1.0"

__all__ = [
    "CLOSED",
    "Channel",
    "ChannelClosed",
    "Ticker",
    "WouldBlock",
    "after",
    "default",
    "select",
    "tick",
]

del _core
