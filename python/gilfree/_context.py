"""gilfree.Context: Go's context — cancellation and deadlines that flow from parent to children.

``ctx.done`` is a Channel closed when the context ends, so it works in select; ``ctx.err()`` says why
(None while alive, gilfree.Cancelled or gilfree.DeadlineExceeded). Cancelling a context cancels its
children; a child's deadline is never later than its parent's.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from typing import Callable

from . import _core
from ._channel import Channel
from ._timer import _Timer, _timers

__all__ = ["Context", "Cancelled", "DeadlineExceeded"]

Cancelled = _core.Cancelled


class DeadlineExceeded(_core.Cancelled, TimeoutError):
    """The context's deadline passed."""

    __module__ = "gilfree"


class Context:
    """A cancellation scope. Make one with Context.background().with_cancel(), .with_timeout(s) or
    .with_deadline(monotonic_t)."""

    __module__ = "gilfree"
    __slots__ = ("_parent", "_done", "_err", "_lock", "_children", "_hooks", "_deadline", "_timer",
                 "__weakref__")

    def __init__(self, _parent: Context | None = None, _deadline: float | None = None) -> None:
        self._parent = _parent
        self._done: Channel[None] = Channel(0)
        self._err: _core.Cancelled | None = None
        self._lock = threading.Lock()
        self._children: dict[Context, None] = {}  # insertion-ordered; O(1) removal when a child ends
        self._hooks: list[Callable[[], None]] = []
        self._deadline = _deadline
        self._timer: _Timer | None = None

    @staticmethod
    def background() -> Context:
        """The root: never cancelled, no deadline."""
        return Context()

    def with_cancel(self) -> Context:
        """A child cancelled by its own cancel() or when this context ends."""
        return self._child(self._deadline)

    def with_timeout(self, seconds: float) -> Context:
        """A child that ends ``seconds`` from now (DeadlineExceeded), or earlier with its parent."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
        if math.isnan(seconds):
            raise ValueError("seconds must not be NaN")
        return self.with_deadline(time.monotonic() + seconds)

    def with_deadline(self, monotonic_t: float) -> Context:
        """A child that ends at time.monotonic() == monotonic_t (DeadlineExceeded), or with its parent."""
        if isinstance(monotonic_t, bool) or not isinstance(monotonic_t, (int, float)):
            raise TypeError(f"monotonic_t must be a number, not {type(monotonic_t).__name__}")
        if math.isnan(monotonic_t):
            raise ValueError("monotonic_t must not be NaN")
        deadline = monotonic_t if self._deadline is None else min(monotonic_t, self._deadline)
        child = self._child(deadline)
        if child._err is None:
            delay = deadline - time.monotonic()
            if delay <= 0:
                child._end(DeadlineExceeded("context deadline exceeded"))
            else:
                # The timer holds the child only weakly, and cancel() withdraws it: a cancelled context
                # is freed at once, not at its deadline.
                ref = weakref.ref(child)

                def expire() -> None:
                    c = ref()
                    if c is not None:
                        c._end(DeadlineExceeded("context deadline exceeded"))
                timer = _timers.call_later(delay, expire)
                with child._lock:
                    ended = child._err is not None
                    if not ended:
                        child._timer = timer
                if ended:
                    timer.cancel()
        return child

    def _child(self, deadline: float | None) -> Context:
        child = Context(self, deadline)
        with self._lock:
            err = self._err
            if err is None:
                self._children[child] = None
        if err is not None:
            child._end(err)
        return child

    @property
    def done(self) -> Channel[None]:
        """A channel closed when the context ends: ``select(ctx.done.recv, ...)``."""
        return self._done

    @property
    def deadline(self) -> float | None:
        """The time.monotonic() at which it ends by itself, or None."""
        return self._deadline

    def err(self) -> _core.Cancelled | None:
        """None while alive; the Cancelled (or DeadlineExceeded) instance once ended."""
        return self._err

    def cancel(self) -> None:
        """End this context and its children with Cancelled (idempotent)."""
        self._end(Cancelled("context cancelled"))

    def _end(self, err: _core.Cancelled) -> None:
        """End this context and, iteratively (no recursion limit), every descendant."""
        stack: list[Context] = [self]
        while stack:
            ctx = stack.pop()
            with ctx._lock:
                if ctx._err is not None:
                    continue
                ctx._err = err
                children, ctx._children = ctx._children, {}
                hooks, ctx._hooks = ctx._hooks, []
                timer, ctx._timer = ctx._timer, None
            if timer is not None:
                timer.cancel()
            ctx._done.close()
            for hook in hooks:
                hook()
            parent = ctx._parent
            if parent is not None and ctx is self:  # a descendant's parent is ending too: leave it be
                with parent._lock:
                    parent._children.pop(ctx, None)
            stack.extend(reversed(list(children)))

    def _on_cancel(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run hook when the context ends (now, if it has); returns a remover."""
        with self._lock:
            if self._err is None:
                self._hooks.append(hook)
                ended = False
            else:
                ended = True
        if ended:
            hook()

        def remove() -> None:
            with self._lock:
                try:
                    self._hooks.remove(hook)
                except ValueError:
                    pass
        return remove

    def __repr__(self) -> str:
        state = "alive" if self._err is None else type(self._err).__name__
        return f"<gilfree.Context {state} deadline={self._deadline}>"
