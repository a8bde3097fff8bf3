"""gilfree.rx: operators against expected sequences, dispose, backpressure, concurrent emitters."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
from conftest import Background, wait_until

import gilfree
from gilfree.rx import Observable


def collect(obs: Observable) -> list[Any]:
    out: list[Any] = []
    done = threading.Event()
    obs.subscribe(out.append, lambda e: (out.append(("error", e)), done.set()), lambda: (out.append("done"),
                                                                                         done.set()))
    assert done.wait(10)
    return out


def test_operators() -> None:
    src = Observable.from_iterable
    assert collect(src(range(6)).map(lambda x: x * 10)) == [0, 10, 20, 30, 40, 50, "done"]
    assert collect(src(range(6)).filter(lambda x: x % 2)) == [1, 3, 5, "done"]
    assert collect(src(itertools.count()).take(3)) == [0, 1, 2, "done"]
    assert collect(src(range(5)).skip(3)) == [3, 4, "done"]
    assert collect(src([1, 2, 3]).scan(lambda a, b: a + b)) == [1, 3, 6, "done"]
    assert collect(src([1, 2, 3]).scan(lambda a, b: a + b, 10)) == [11, 13, 16, "done"]
    assert collect(src([1, 2, 3]).reduce(lambda a, b: a * b)) == [6, "done"]
    assert collect(src([3, 1, 3, 2, 1]).distinct()) == [3, 1, 2, "done"]
    assert collect(src(range(5)).buffer(2)) == [[0, 1], [2, 3], [4], "done"]
    assert collect(src("abc").zip(src(range(10)))) == [("a", 0), ("b", 1), ("c", 2), "done"]
    assert collect(src([1, 2]).flat_map(lambda x: src([x] * 3))) == [1, 1, 1, 2, 2, 2, "done"]
    assert sorted(collect(src([1, 2]).merge(src([3])))[:-1]) == [1, 2, 3]
    assert collect(src(range(3)).take(0)) == ["done"]


def test_errors_end_the_stream() -> None:
    out = collect(Observable.from_iterable(range(5)).map(lambda x: 1 // (x - 2)))
    assert out[:2] == [-1, -1] and out[2][0] == "error" and isinstance(out[2][1], ZeroDivisionError)
    assert len(out) == 3  # nothing after on_error


def test_create_and_dispose_stops_the_source() -> None:
    cleaned = threading.Event()

    def produce(observer: Any) -> Any:
        def run() -> None:
            for i in itertools.count():
                if cleaned.is_set():
                    return
                observer.on_next(i)
                time.sleep(0.001)
        threading.Thread(target=run, daemon=True).start()
        return cleaned.set

    got: list[int] = []
    d = Observable.create(produce).subscribe(got.append)
    wait_until(lambda: len(got) > 5)
    d.dispose()
    assert cleaned.is_set() and d.disposed
    n = len(got)
    time.sleep(0.02)
    assert len(got) <= n + 1


def test_interval_from_channel_debounce_throttle() -> None:
    got: list[int] = []
    d = Observable.interval(0.01).subscribe(got.append)
    wait_until(lambda: len(got) >= 3)
    d.dispose()
    assert got[:3] == [0, 1, 2]
    ch: gilfree.Channel[int] = gilfree.Channel(None)
    ch.send_many([5, 6, 7])
    ch.close()
    assert collect(Observable.from_channel(ch)) == [5, 6, 7, "done"]

    def bursts(observer: Any) -> None:
        def run() -> None:
            for burst in ([1, 2, 3], [4, 5]):
                for v in burst:
                    observer.on_next(v)
                time.sleep(0.1)
            observer.on_completed()
        threading.Thread(target=run, daemon=True).start()

    assert collect(Observable.create(bursts).debounce(0.03)) == [3, 5, "done"]
    assert collect(Observable.create(bursts).throttle(0.05)) == [1, 4, "done"]


def test_observe_on_applies_backpressure_to_the_source() -> None:
    pulled = [0]

    def source() -> itertools.count[int]:
        for i in itertools.count():
            pulled[0] += 1
            yield i  # type: ignore[misc]
        raise AssertionError  # pragma: no cover

    got: list[int] = []
    with gilfree.ThreadPool(2) as pool:
        def slow(v: int) -> None:
            time.sleep(0.002)
            got.append(v)

        sub = Background(lambda: Observable.from_iterable(source()).observe_on(pool, capacity=8).take(100)
                         .subscribe(slow))
        wait_until(lambda: len(got) >= 50)
        assert pulled[0] <= len(got) + 8 + 2, f"the source ran {pulled[0] - len(got)} items ahead"
        sub.join(30)  # take(100) disposes: the channel closes, the source stops, subscribe returns
        wait_until(lambda: len(got) == 100)
    assert got == list(range(100))


def test_to_channel_backpressure() -> None:
    pulled = [0]

    def source() -> itertools.count[int]:
        for i in itertools.count():
            pulled[0] += 1
            yield i  # type: ignore[misc]
        raise AssertionError  # pragma: no cover

    ch = Observable.from_iterable(source()).take(1000).to_channel(capacity=4)
    first = [ch.recv(timeout=5) for _ in range(10)]
    time.sleep(0.05)
    assert first == list(range(10)) and pulled[0] <= 10 + 4 + 2
    assert len(list(ch)) == 990


def test_merge_under_concurrent_emitters_is_serialised() -> None:
    chans: list[gilfree.Channel[int]] = [gilfree.Channel(8) for _ in range(4)]
    sources = [Observable.from_channel(c) for c in chans]
    inside = [0]
    overlap = [False]
    got: list[int] = []
    done = threading.Event()

    def on_next(v: int) -> None:
        inside[0] += 1
        overlap[0] |= inside[0] > 1
        got.append(v)
        inside[0] -= 1

    sources[0].merge(*sources[1:]).subscribe(on_next, None, done.set)
    emitters = [Background(lambda k=k: ([chans[k].send(k * 10_000 + i) for i in range(2000)], chans[k].close()))
                for k in range(4)]
    for e in emitters:
        e.join(30)
    assert done.wait(10)
    assert not overlap[0] and sorted(got) == sorted(k * 10_000 + i for k in range(4) for i in range(2000))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Observable.interval(0)
    with pytest.raises(TypeError):
        Observable.from_channel([1])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Observable.from_iterable([1]).buffer(0)
    with pytest.raises(TypeError):
        Observable.create(3)  # type: ignore[arg-type]
