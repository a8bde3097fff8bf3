"""A producer-consumer pipeline: read words, work on them concurrently, keep the input order, batch them.

    python examples/pipeline_example.py
"""

import time

import gilfree


def slow_upper(word: str) -> str:
    time.sleep(0.01)  # stands for I/O: the GIL is released, so 8 workers overlap
    return word.upper()


def main() -> None:
    words = "the quick brown fox jumps over the lazy dog again and again".split()
    t0 = time.perf_counter()
    batches = (gilfree.Pipeline(words)
               .map(slow_upper, workers=8)          # concurrent, input order kept
               .filter(lambda w: w != "THE")
               .batch(4)
               .collect())
    print(batches, f"{time.perf_counter() - t0:.3f} s")

    a: gilfree.Channel[int] = gilfree.Channel(None)
    b: gilfree.Channel[int] = gilfree.Channel(None)
    a.send_many([1, 3, 5])
    b.send_many([2, 4])
    a.close()
    b.close()
    print(sorted(gilfree.merge(a, b)))  # fan-in


if __name__ == "__main__":
    main()
