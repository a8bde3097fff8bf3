"""gilfree.Actor and Supervisor: order, ask, backpressure, lifecycle, 10k idle actors, supervision."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import Background, wait_until

import gilfree
from gilfree import Actor, ActorStopped, Supervisor


class Counter(Actor):
    def __init__(self, start: int = 0) -> None:
        self.n = start
        self.log: list[Any] = []

    def receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        if message == "get":
            return self.n
        self.n += message
        self.log.append(message)
        return self.n


def test_tell_ask_in_order_one_at_a_time() -> None:
    ref = Counter.start(10)
    for i in range(1, 101):
        ref.tell(i)
    assert ref.ask("get").result(timeout=5) == 10 + sum(range(1, 101))
    assert ref._instance.log == list(range(1, 101))  # type: ignore[attr-defined]
    ref.stop()


def test_one_message_at_a_time_under_many_senders() -> None:
    class Guard(Actor):
        def __init__(self) -> None:
            self.inside = 0
            self.overlap = False
            self.count = 0

        def receive(self, message: Any) -> int:
            self.inside += 1
            self.overlap |= self.inside > 1
            time.sleep(0.0001)
            self.count += 1
            self.inside -= 1
            return self.count

    ref = Guard.start()
    senders = [Background(lambda: [ref.tell(i) for i in range(200)]) for _ in range(4)]
    for s in senders:
        s.join()
    assert ref.ask(None).result(timeout=10) == 801
    assert not ref._instance.overlap  # type: ignore[attr-defined]


def test_ask_gets_the_exception_and_on_failure_runs() -> None:
    failures: list[BaseException] = []

    class A(Counter):
        def on_failure(self, exc: BaseException) -> None:
            failures.append(exc)

    ref = A.start()
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom").result(timeout=5)
    assert isinstance(failures[0], ValueError)
    assert ref.ask(1).result(timeout=5) == 1  # an unsupervised actor goes on
    ref.stop()


def test_lifecycle_and_stopped() -> None:
    events: list[str] = []

    class L(Actor):
        def on_start(self) -> None:
            events.append("start")

        def on_stop(self) -> None:
            events.append("stop")

        def receive(self, message: Any) -> Any:
            return message

    ref = L.start()
    assert ref.ask("x").result(timeout=5) == "x"
    ref.stop()
    ref.stop()
    assert events == ["start", "stop"] and not ref.alive
    with pytest.raises(ActorStopped):
        ref.tell(1)
    with pytest.raises(ActorStopped):
        ref.ask(1)


def test_bounded_mailbox_backpressure() -> None:
    gate = threading.Event()

    class Slow(Actor):
        def receive(self, message: Any) -> Any:
            gate.wait(10)
            return message

    ref = Slow.start(mailbox=2)
    ref.tell(0)  # taken by the actor, which blocks on the gate
    wait_until(lambda: len(ref._mailbox) == 0)
    ref.tell(1)
    ref.tell(2)
    blocked = Background(ref.tell, 3)
    time.sleep(0.1)
    assert not blocked.done.is_set(), "tell did not block on a full mailbox"
    gate.set()
    blocked.join()
    assert ref.ask("last").result(timeout=5) == "last"
    ref.stop()


def test_ten_thousand_idle_actors_cost_no_threads() -> None:
    with gilfree.ThreadPool(2) as pool:
        before = threading.active_count()
        refs = [Counter.start(pool=pool) for _ in range(10_000)]
        assert threading.active_count() == before
        assert pool.stats()["workers"] == 0  # not even the pool's: its workers start on demand
        for r in refs[:100]:
            r.tell(1)
        assert sum(r.ask("get").result(timeout=10) for r in refs[:100]) == 100
        assert pool.stats()["workers"] <= 2
        for r in refs:
            r.stop()


@pytest.mark.parametrize("strategy,expected", [("one_for_one", [3, 0, 3]), ("one_for_all", [0, 0, 0]),
                                               ("rest_for_one", [3, 0, 0])])
def test_supervision_strategies(strategy: str, expected: list[int]) -> None:
    sup = Supervisor([Counter, Counter, Counter], strategy=strategy)
    a, b, c = sup.children
    for ref in (a, b, c):
        ref.ask(3).result(timeout=5)
    with pytest.raises(ValueError):
        b.ask("boom").result(timeout=5)
    assert [r.ask("get").result(timeout=5) for r in (a, b, c)] == expected  # fresh state, same refs
    sup.stop()


def test_restart_intensity_stops_children_and_reports() -> None:
    reported: list[BaseException] = []
    sup = Supervisor([Counter, Counter], max_restarts=2, within=5.0, parent=reported.append)
    a, b = sup.children
    for _ in range(3):
        with pytest.raises(ValueError):
            a.ask("boom").result(timeout=5)
    with pytest.raises(ValueError):
        sup.failure.result(timeout=5)
    assert not a.alive and not b.alive and isinstance(reported[0], ValueError)
    with pytest.raises(ActorStopped):
        b.tell(1)


def test_mailbox_means_what_a_channels_capacity_means() -> None:
    default, unbounded, bounded = Counter.start(), Counter.start(mailbox=None), Counter.start(mailbox=3)
    assert default._mailbox.capacity == 1024  # bounded by default
    assert unbounded._mailbox.capacity is None and bounded._mailbox.capacity == 3
    for ref in (default, unbounded, bounded):
        ref.tell(2)
        assert ref.ask("get").result(timeout=5) == 2
        ref.stop()
    with pytest.raises(ValueError, match="mailbox"):
        Counter.start(mailbox=0)  # an unbuffered mailbox cannot work: tell would wait for its own drain
    with pytest.raises(TypeError, match="mailbox"):
        Counter.start(mailbox="8")  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Counter.start(mailbox=-1)
    with pytest.raises(ValueError):
        Supervisor([Counter], strategy="all_for_none")
    with pytest.raises(TypeError):
        Supervisor([3])  # type: ignore[list-item]
