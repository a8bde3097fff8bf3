"""Pipeline stages on executors whose workers are other processes: ProcessPoolExecutor, and dask.distributed
workers (a LocalCluster of worker processes, as across machines). Items and functions cross the wire pickled.

Each executor is checked for: the stage ran in the workers' processes, output in input order, backpressure
(the source is read at most a window ahead of the consumer), and an error in a stage stops the pipeline.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import threading
from typing import Any, Callable, Iterator

import pytest

from gilfree import Pipeline

pytestmark = pytest.mark.nosanitizer  # worker processes start without the sanitizer runtime preloaded


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail_at_7(x: int) -> int:
    if x == 7:
        raise ValueError("bad item 7")
    return x


def _process_pool() -> Iterator[cf.Executor]:
    with cf.ProcessPoolExecutor(2) as ppe:
        yield ppe


def _dask_cluster() -> Iterator[cf.Executor]:
    distributed = pytest.importorskip("dask.distributed", reason="dask[distributed] comes with the test extra")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        yield client.get_executor()


EXECUTORS: dict[str, Callable[[], Iterator[cf.Executor]]] = {
    "ProcessPoolExecutor": _process_pool,
    "dask LocalCluster (processes)": _dask_cluster,
}


@pytest.fixture(scope="module", params=list(EXECUTORS))
def executor(request: pytest.FixtureRequest) -> Iterator[cf.Executor]:
    yield from EXECUTORS[request.param]()


class CountingSource:
    """An endless source that records how many items the pipeline has pulled."""

    def __init__(self) -> None:
        self.pulled = 0
        self.lock = threading.Lock()

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            with self.lock:
                self.pulled += 1
            yield i


def test_stage_runs_in_worker_processes_in_order(executor: cf.Executor) -> None:
    out = Pipeline(range(40)).map(square_and_pid, workers=4, executor=executor).collect()
    assert [sq for sq, _ in out] == [x * x for x in range(40)]
    pids = {pid for _, pid in out}
    assert os.getpid() not in pids


def test_backpressure_bounds_what_is_read_ahead(executor: cf.Executor) -> None:
    src = CountingSource()
    workers, buffer = 3, 2
    it = iter(Pipeline(src, buffer=buffer).map(square_and_pid, workers=workers, buffer=buffer,
                                               executor=executor))
    consumed = 0
    ahead = []
    for sq, _ in it:
        assert sq == consumed * consumed
        consumed += 1
        with src.lock:
            ahead.append(src.pulled - consumed)
        if consumed == 30:
            break
    # in flight on the executor (workers) + the stage's and the source's buffers + one in hand per thread
    assert max(ahead) <= workers + 2 * buffer + 4, ahead


def test_error_in_a_stage_stops_the_pipeline(executor: cf.Executor) -> None:
    src = CountingSource()
    with pytest.raises(ValueError, match="bad item 7"):
        Pipeline(src).map(fail_at_7, workers=2, executor=executor).collect()
    pulled = src.pulled
    assert pulled < 7 + 50
    # nothing keeps reading the endless source once the pipeline has stopped
    threading.Event().wait(0.3)
    assert src.pulled == pulled
