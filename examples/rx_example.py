"""Observables with backpressure: a fast source, a slow observer on a pool, through a bounded channel.

    python examples/rx_example.py
"""

import itertools
import time

import gilfree
from gilfree.rx import Observable


def main() -> None:
    squares: list[int] = []
    Observable.from_iterable(range(20)).map(lambda x: x * x).filter(lambda x: x % 2 == 1).subscribe(squares.append)
    print("odd squares:", squares)

    got: list[int] = []
    with gilfree.ThreadPool(2) as pool:
        # an endless source; the observer is slow; observe_on's bounded channel makes the source wait
        Observable.from_iterable(itertools.count()).observe_on(pool, capacity=8).take(20).subscribe(
            lambda v: (time.sleep(0.001), got.append(v)))
    print("first 20 through a bounded channel:", got)

    ch = Observable.from_iterable(range(5)).buffer(2).to_channel(capacity=2)
    print("batches:", list(ch))


if __name__ == "__main__":
    main()
