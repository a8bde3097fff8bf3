"""gilfree.Context: Go's context — cancel, deadlines, done channel in select, err(), parent to children."""

from __future__ import annotations

import time

import pytest
from conftest import Background

import gilfree
from gilfree import Cancelled, Context, DeadlineExceeded, select


def test_background_is_never_done() -> None:
    bg = Context.background()
    assert bg.err() is None and bg.deadline is None
    with pytest.raises(TimeoutError):
        bg.done.recv(timeout=0.02)


def test_cancel_closes_done_and_sets_err() -> None:
    ctx = Context.background().with_cancel()
    waiter = Background(lambda: select(ctx.done.recv, timeout=5))
    time.sleep(0.02)
    ctx.cancel()
    assert waiter.join() == (0, gilfree.CLOSED)
    assert isinstance(ctx.err(), Cancelled)
    ctx.cancel()  # idempotent
    assert ctx.done.closed


def test_children_are_cancelled_with_their_parent() -> None:
    parent = Context.background().with_cancel()
    child = parent.with_cancel()
    grandchild = child.with_timeout(60)
    sibling = parent.with_cancel()
    sibling.cancel()
    assert parent.err() is None and child.err() is None  # a child's cancel does not go up
    parent.cancel()
    assert isinstance(child.err(), Cancelled) and isinstance(grandchild.err(), Cancelled)
    late = parent.with_cancel()
    assert isinstance(late.err(), Cancelled)  # a child of an ended context starts ended


def test_timeout_and_deadline() -> None:
    t0 = time.monotonic()
    ctx = Context.background().with_timeout(0.1)
    i, _ = select(ctx.done.recv, timeout=5)
    assert i == 0 and time.monotonic() - t0 >= 0.09
    assert isinstance(ctx.err(), DeadlineExceeded) and isinstance(ctx.err(), TimeoutError)
    d = Context.background().with_deadline(time.monotonic() + 0.05)
    with pytest.raises(gilfree.ChannelClosed):
        d.done.recv(timeout=5)
    assert isinstance(d.err(), DeadlineExceeded)
    past = Context.background().with_deadline(time.monotonic() - 1)
    assert isinstance(past.err(), DeadlineExceeded)


def test_child_deadline_never_later_than_parent() -> None:
    parent = Context.background().with_timeout(0.05)
    child = parent.with_timeout(60)
    assert child.deadline == parent.deadline
    with pytest.raises(gilfree.ChannelClosed):
        child.done.recv(timeout=5)
    assert isinstance(child.err(), DeadlineExceeded)


def test_bad_arguments() -> None:
    bg = Context.background()
    with pytest.raises(TypeError):
        bg.with_timeout("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bg.with_timeout(float("nan"))
    with pytest.raises(TypeError):
        bg.with_deadline(None)  # type: ignore[arg-type]
