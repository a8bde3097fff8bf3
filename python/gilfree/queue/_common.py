"""What the backends share: the result of a take, and the errors."""

from __future__ import annotations

from typing import NamedTuple


class LeaseLost(Exception):
    """The message's lease ran out and it went to another consumer (or to the dead letters) before this
    ack, nack or extend: refused, so that only one delivery's outcome counts."""

    __module__ = "gilfree"


class Taken(NamedTuple):
    """One delivery: the message and the lease that names this consumer's hold on it."""

    id: str
    key: str | None
    body: bytes
    attempt: int
    token: int | str  # SQLite: an int; Redis: a str
