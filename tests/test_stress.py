"""Many threads at once: no value lost or duplicated, with close racing the senders.

8 producers x 8 consumers x 100k items (scaled down under the sanitizers), for capacities 0, 1, 64 and
unbounded, through plain send/recv, batches, and select.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Callable

import pytest
from conftest import SANITIZER, Background, scaled

from gilfree import CLOSED, Channel, ChannelClosed, WouldBlock, select

CAPACITIES = [0, 1, 64, None]
PRODUCERS = CONSUMERS = 8


def _producer_plain(ch: Channel[int], values: range) -> list[int]:
    sent = []
    try:
        for v in values:
            ch.send(v)
            sent.append(v)
    except ChannelClosed:
        pass
    return sent


def _producer_batched(ch: Channel[int], values: range) -> list[int]:
    sent: list[int] = []
    it = iter(values)
    while True:
        batch = [v for _, v in zip(range(37), it)]
        if not batch:
            return sent
        try:
            ch.send_many(batch)
            sent += batch
        except ChannelClosed as e:
            sent += batch[: e.sent]  # type: ignore[attr-defined]
            return sent


def _producer_select(ch: Channel[int], values: range) -> list[int]:
    sent = []
    try:
        for v in values:
            select((ch.send, v), None)
            sent.append(v)
    except ChannelClosed:
        pass
    return sent


def _consumer_plain(ch: Channel[int]) -> list[int]:
    return list(ch)


def _consumer_batched(ch: Channel[int]) -> list[int]:
    got: list[int] = []
    while True:
        try:
            got += ch.recv_many(50)
        except ChannelClosed:
            return got


def _consumer_select(ch: Channel[int]) -> list[int]:
    got = []
    never: Channel[int] = Channel()
    while True:
        _, v = select(never.recv, ch.recv)
        if v is CLOSED:
            return got
        got.append(v)


MODES: dict[str, tuple[Callable[..., list[int]], Callable[..., list[int]]]] = {
    "plain": (_producer_plain, _consumer_plain),
    "batched": (_producer_batched, _consumer_batched),
    "select": (_producer_select, _consumer_select),
}


def _run(capacity: int | None, mode: str, total: int, close_early: bool) -> None:
    ch: Channel[int] = Channel(capacity)
    produce, consume = MODES[mode]
    per = total // PRODUCERS
    consumers = [Background(consume, ch) for _ in range(CONSUMERS)]
    producers = [Background(produce, ch, range(p * per, (p + 1) * per)) for p in range(PRODUCERS)]
    if close_early:
        threading.Event().wait(random.uniform(0.001, 0.05))
        ch.close()
    sent: list[int] = []
    for p in producers:
        sent += p.join(300)
    if not close_early:
        ch.close()
    received: list[int] = []
    for c in consumers:
        received += c.join(300)
    counts = Counter(received)
    dupes = [v for v, k in counts.items() if k > 1]
    assert not dupes, f"duplicated: {dupes[:10]}"
    assert set(counts) == set(sent), (
        f"lost {len(set(sent) - set(counts))}, phantom {len(set(counts) - set(sent))}")
    if not close_early:
        assert len(sent) == per * PRODUCERS
    assert ch._waiters() == (0, 0)


@pytest.mark.parametrize("capacity", CAPACITIES)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_no_loss_no_duplicate(capacity: int | None, mode: str) -> None:
    total = scaled(100_000 if mode != "select" else 30_000, 800)
    _run(capacity, mode, total, close_early=False)


@pytest.mark.parametrize("capacity", CAPACITIES)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_close_racing_senders(capacity: int | None, mode: str) -> None:
    for _ in range(3):
        _run(capacity, mode, scaled(20_000, 800), close_early=True)


def test_many_selects_over_shared_channels() -> None:
    """16 threads each select over the same 4 channels, half sending, half receiving."""
    chans: list[Channel[int]] = [Channel(c) for c in (0, 1, 8, 0)]
    n = scaled(5000)

    def sender(k: int) -> list[int]:
        out = []
        for i in range(n):
            v = k * n + i
            select(*[(c.send, v) for c in chans], timeout=60)
            out.append(v)
        return out

    def receiver() -> list[int]:
        got = []
        while True:
            _, v = select(*[c.recv for c in chans], timeout=60)
            if v is CLOSED:
                return got
            got.append(v)

    rs = [Background(receiver) for _ in range(8)]
    ss = [Background(sender, k) for k in range(8)]
    sent = sorted(v for s in ss for v in s.join(300))
    for c in chans:
        c.close()
    # a receiver stops at the first closed channel it picks: drain the rest
    got = [v for r in rs for v in r.join(300)]
    for c in chans:
        got += list(c)
    assert sorted(got) == sent


def _producer_mixed(ch: Channel[int], values: range, k: int) -> list[int]:
    """Alternates plain sends, batches, selects and nowait retries: the lock-free path and the parked one."""
    sent: list[int] = []
    it = iter(values)
    other: Channel[int] = Channel()
    try:
        for i, v in enumerate(it):
            how = (i + k) % 4
            if how == 0:
                ch.send(v)
            elif how == 1:
                batch = [v, *(w for _, w in zip(range(5), it))]
                try:
                    ch.send_many(batch)
                except ChannelClosed as e:
                    sent += batch[: e.sent]  # type: ignore[attr-defined]
                    raise
                sent += batch
                continue
            elif how == 2:
                idx, _ = select((other.send, -1), (ch.send, v))
                assert idx == 1
            else:
                while True:
                    try:
                        ch.send_nowait(v)
                        break
                    except WouldBlock:
                        if ch.closed:
                            raise ChannelClosed from None
                        threading.Event().wait(0.0001)
            sent.append(v)
    except ChannelClosed:
        pass
    return sent


def _consumer_mixed(ch: Channel[int], k: int) -> list[int]:
    got: list[int] = []
    other: Channel[int] = Channel(1)
    i = k
    while True:
        i += 1
        how = i % 3
        try:
            if how == 0:
                got.append(ch.recv())
            elif how == 1:
                got += ch.recv_many(7)
            else:
                _, v = select(other.recv, ch.recv)
                if v is CLOSED:
                    return got
                got.append(v)
        except ChannelClosed:
            return got


@pytest.mark.parametrize("capacity", [1, 2, 1024])
def test_fast_and_parked_paths_mixed_with_close_racing(capacity: int) -> None:
    """Bounded channels send and receive through a lock-free ring until someone parks. 100 rounds of 4
    producers and 4 consumers mixing every kind of operation, closed at a random moment: nothing lost or
    duplicated, each producer's values reach each consumer in order, nobody left parked, no hang."""
    rounds = 100 if not SANITIZER else 10
    per = scaled(600, 60)
    for r in range(rounds):
        ch: Channel[int] = Channel(capacity)
        consumers = [Background(_consumer_mixed, ch, k) for k in range(4)]
        producers = [Background(_producer_mixed, ch, range(p * per, (p + 1) * per), p) for p in range(4)]
        if r % 2:
            threading.Event().wait(random.uniform(0, 0.01))
            ch.close()
        sent: list[int] = []
        for p in producers:
            sent += p.join(60)
        ch.close()
        received: list[list[int]] = [c.join(60) for c in consumers]
        flat = [v for got in received for v in got]
        counts = Counter(flat)
        assert not [v for v, n in counts.items() if n > 1], f"round {r}: duplicated"
        assert set(counts) == set(sent), f"round {r}: lost {len(set(sent) - set(counts))}"
        for got in received:
            for p in range(4):
                mine = [v for v in got if p * per <= v < (p + 1) * per]
                assert mine == sorted(mine), f"round {r}: producer {p}'s values out of order"
        assert ch._waiters() == (0, 0)
        assert len(ch) == 0
