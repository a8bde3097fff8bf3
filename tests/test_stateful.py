"""A Hypothesis state machine drives random send/recv/close/try operations, each run on one of several
threads, against a simple reference model (a deque with a capacity and a closed flag)."""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Any, Callable

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gilfree import CLOSED, Channel, ChannelClosed, WouldBlock, default, select

TINY = 0.001  # timeout for "blocking" calls that the model says cannot proceed


class Worker:
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            fn, out = job
            try:
                out.put(("ok", fn()))
            except BaseException as e:  # noqa: BLE001
                out.put(("err", e))

    def call(self, fn: Callable[[], Any]) -> tuple[str, Any]:
        out: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.jobs.put((fn, out))
        return out.get(timeout=30)


WORKERS = [Worker() for _ in range(3)]


def outcome(kind: str, value: Any = None) -> tuple[str, Any]:
    return (kind, value)


class ChannelMachine(RuleBasedStateMachine):
    @initialize(capacity=st.sampled_from([0, 1, 2, 5, None]))
    def make(self, capacity: int | None) -> None:
        self.ch: Channel[int] = Channel(capacity)
        self.cap = capacity
        self.model: deque[int] = deque()
        self.closed = False

    def room(self) -> bool:
        return self.cap is None or len(self.model) < self.cap

    def run(self, worker: int, fn: Callable[[], Any]) -> tuple[str, Any]:
        return WORKERS[worker].call(fn)

    def expect(self, got: tuple[str, Any], kind: str, value: Any = None) -> None:
        if kind == "ok":
            assert got == ("ok", value), got
        else:
            assert got[0] == "err" and isinstance(got[1], kind), got  # type: ignore[arg-type]

    @rule(w=st.integers(0, 2), v=st.integers(), nowait=st.booleans())
    def send(self, w: int, v: int, nowait: bool) -> None:
        got = self.run(w, (lambda: self.ch.send_nowait(v)) if nowait else (lambda: self.ch.send(v, timeout=TINY)))
        if self.closed:
            self.expect(got, ChannelClosed)  # type: ignore[arg-type]
        elif self.room():
            self.expect(got, "ok", None)
            self.model.append(v)
        else:
            self.expect(got, WouldBlock if nowait else TimeoutError)  # type: ignore[arg-type]

    @rule(w=st.integers(0, 2), nowait=st.booleans())
    def recv(self, w: int, nowait: bool) -> None:
        got = self.run(w, self.ch.recv_nowait if nowait else (lambda: self.ch.recv(timeout=TINY)))
        if self.model:
            self.expect(got, "ok", self.model.popleft())
        elif self.closed:
            self.expect(got, ChannelClosed)  # type: ignore[arg-type]
        else:
            self.expect(got, WouldBlock if nowait else TimeoutError)  # type: ignore[arg-type]

    @rule(w=st.integers(0, 2), vs=st.lists(st.integers(), max_size=6))
    def send_many(self, w: int, vs: list[int]) -> None:
        got = self.run(w, lambda: self.ch.send_many(vs, timeout=TINY))
        if self.closed:
            if not vs:
                self.expect(got, "ok", 0)
                return
            self.expect(got, ChannelClosed)  # type: ignore[arg-type]
            assert got[1].sent == 0
            return
        fit = len(vs) if self.cap is None else max(0, min(len(vs), self.cap - len(self.model)))
        self.model.extend(vs[:fit])
        if fit == len(vs):
            self.expect(got, "ok", len(vs))
        else:
            self.expect(got, TimeoutError)  # type: ignore[arg-type]
            assert got[1].sent == fit

    @rule(w=st.integers(0, 2), k=st.integers(1, 7))
    def recv_many(self, w: int, k: int) -> None:
        got = self.run(w, lambda: self.ch.recv_many(k, timeout=TINY))
        if self.model:
            want = [self.model.popleft() for _ in range(min(k, len(self.model)))]
            self.expect(got, "ok", want)
        elif self.closed:
            self.expect(got, ChannelClosed)  # type: ignore[arg-type]
        else:
            self.expect(got, TimeoutError)  # type: ignore[arg-type]

    @rule(w=st.integers(0, 2), v=st.integers(), send=st.booleans())
    def select_default(self, w: int, v: int, send: bool) -> None:
        case = (self.ch.send, v) if send else self.ch.recv
        got = self.run(w, lambda: select(case, default))
        if send:
            if self.closed:
                self.expect(got, ChannelClosed)  # type: ignore[arg-type]
            elif self.room():
                self.expect(got, "ok", (0, None))
                self.model.append(v)
            else:
                self.expect(got, "ok", (1, None))
        else:
            if self.model:
                self.expect(got, "ok", (0, self.model.popleft()))
            elif self.closed:
                self.expect(got, "ok", (0, CLOSED))
            else:
                self.expect(got, "ok", (1, None))

    @rule(w=st.integers(0, 2))
    def close(self, w: int) -> None:
        self.expect(self.run(w, self.ch.close), "ok", None)
        self.closed = True

    @invariant()
    def agrees(self) -> None:
        if hasattr(self, "ch"):
            assert len(self.ch) == len(self.model)
            assert self.ch.closed == self.closed
            assert self.ch._waiters() == (0, 0)


ChannelMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestChannelMachine = ChannelMachine.TestCase
