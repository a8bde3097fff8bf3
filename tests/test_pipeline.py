"""gilfree.Pipeline, merge and broadcast: order, backpressure, errors, cancellation, executors."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import random
import threading
import time
import traceback

import pytest
from conftest import Background, wait_until

import gilfree
from gilfree import Channel, Pipeline


def square(x: int) -> int:
    return x * x


def pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gilfree-pipeline")]


def test_stages_in_order() -> None:
    got = Pipeline(range(20)).map(square, workers=4).filter(lambda v: v % 2 == 0).batch(3).collect()
    evens = [x * x for x in range(20) if x * x % 2 == 0]
    assert got == [evens[i:i + 3] for i in range(0, len(evens), 3)]
    assert Pipeline(range(4)).flat_map(lambda x: [x] * x).collect() == [1, 2, 2, 3, 3, 3]
    assert list(Pipeline([])) == []


def test_ordered_keeps_input_order_under_random_durations() -> None:
    rng = random.Random(4)
    delays = [rng.random() / 200 for _ in range(100)]

    def slow(i: int) -> int:
        time.sleep(delays[i])
        return i

    assert Pipeline(range(100)).map(slow, workers=8).collect() == list(range(100))
    unordered = Pipeline(range(100)).map(slow, workers=8, ordered=False).collect()
    assert sorted(unordered) == list(range(100)) and unordered != list(range(100))


def test_backpressure_bounds_an_endless_source() -> None:
    read = [0]

    def endless() -> itertools.count[int]:
        for i in itertools.count():
            read[0] += 1
            yield i  # type: ignore[misc]
        raise AssertionError  # pragma: no cover

    it = iter(Pipeline(endless(), buffer=4).map(square, workers=2, buffer=4).filter(lambda v: True))
    got = []
    for v in it:
        got.append(v)
        time.sleep(0.001)  # a slow sink
        if len(got) == 200:
            break
    time.sleep(0.05)
    assert got == [x * x for x in range(200)]
    assert read[0] <= 200 + 4 + 4 + 16 + 2 + 2, f"read {read[0]} items ahead of a slow sink"
    it.close()  # type: ignore[attr-defined]
    wait_until(lambda: not pipeline_threads())


def test_exception_stops_everything_with_the_original_traceback() -> None:
    def boom(x: int) -> int:
        if x == 7:
            raise ValueError("stage failed at 7")
        return x

    with pytest.raises(ValueError, match="at 7") as info:
        Pipeline(itertools.count()).map(boom, workers=3).map(square).collect()
    assert "boom" in "".join(traceback.format_tb(info.value.__traceback__))
    wait_until(lambda: not pipeline_threads())
    with pytest.raises(KeyError):
        Pipeline(range(5)).filter(lambda v: {}[v]).collect()  # type: ignore[index]


def test_context_cancellation_stops_it() -> None:
    ctx = gilfree.Context.background().with_cancel()
    seen = []
    with pytest.raises(gilfree.Cancelled):
        for v in Pipeline(itertools.count(), ctx=ctx).map(square, workers=2):
            seen.append(v)
            if len(seen) == 10:
                ctx.cancel()
    wait_until(lambda: not pipeline_threads())
    with pytest.raises(gilfree.DeadlineExceeded):
        Pipeline(itertools.count(), ctx=gilfree.Context.background().with_timeout(0.05)).map(
            lambda x: time.sleep(0.001)).collect()


def test_channel_source_and_to_channel() -> None:
    src: Channel[int] = Channel(None)
    src.send_many(range(10))
    src.close()
    dst: Channel[int] = Channel(None)
    Pipeline(src).map(square).to_channel(dst)
    assert dst.recv_many(100) == [x * x for x in range(10)]
    assert not dst.closed


def test_process_pool_executor_stage() -> None:
    with cf.ProcessPoolExecutor(2) as ppe:
        assert Pipeline(range(30)).map(square, workers=2, executor=ppe).collect() == [x * x for x in range(30)]


def test_dask_executor_stage() -> None:
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, processes=False) as cluster, distributed.Client(cluster) as client:
        ex = client.get_executor()
        assert Pipeline(range(10)).map(square, workers=2, executor=ex).collect() == [x * x for x in range(10)]


def test_bad_arguments() -> None:
    with pytest.raises(TypeError):
        Pipeline(3)  # type: ignore[arg-type]
    p = Pipeline(range(3))
    with pytest.raises(TypeError):
        p.map(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        p.map(square, workers=0)
    with pytest.raises(ValueError):
        p.batch(0)
    with pytest.raises(TypeError):
        p.map(square, executor="pool")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Pipeline(range(3), ctx="ctx")  # type: ignore[arg-type]


def test_merge_with_concurrent_emitters() -> None:
    ins: list[Channel[int]] = [Channel(4) for _ in range(4)]
    out = gilfree.merge(*ins)

    def emit(k: int) -> None:
        for i in range(500):
            ins[k].send(k * 1000 + i)
        ins[k].close()

    emitters = [Background(emit, k) for k in range(4)]
    got = list(out)
    for e in emitters:
        e.join()
    assert sorted(got) == sorted(k * 1000 + i for k in range(4) for i in range(500))
    for k in range(4):  # each input's order is kept
        mine = [v for v in got if v // 1000 == k]
        assert mine == sorted(mine)
    with pytest.raises(TypeError):
        gilfree.merge(3)  # type: ignore[arg-type]


def test_broadcast() -> None:
    src: Channel[int] = Channel(2)
    outs = gilfree.broadcast(src, 3)
    readers = [Background(lambda o=o: list(o)) for o in outs]
    for i in range(100):
        src.send(i)
    src.close()
    assert [r.join() for r in readers] == [list(range(100))] * 3
    with pytest.raises(ValueError):
        gilfree.broadcast(src, 0)


def test_a_paused_source_does_not_hold_back_ready_results() -> None:
    """A map stage waits for input only when nothing is in flight: with a source channel that has paused
    (a queue consumer, a socket), every result already computed comes out."""
    src: gilfree.Channel[int] = gilfree.Channel(None)
    src.send_many(range(10))
    it = iter(gilfree.Pipeline(src).map(lambda x: x + 1, workers=3).map(lambda x: x * 10))
    got = [next(it) for _ in range(10)]  # the source stays open: nothing more is coming for now
    assert got == [(x + 1) * 10 for x in range(10)]
    src.send(10)
    assert next(it) == 110
    src.close()
    assert list(it) == []
