"""Shared helpers for gilfree's tests."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import pytest

# Stress tests scale their item counts by this (the sanitizer runs use 0.1: they are ~10x slower).
STRESS_SCALE = float(os.environ.get("GILFREE_STRESS_SCALE", "1"))
SANITIZER = os.environ.get("GILFREE_SANITIZER", "")


def scaled(n: int, minimum: int = 100) -> int:
    return max(minimum, int(n * STRESS_SCALE))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nosanitizer: skipped under the sanitizer builds (timing or RSS)")


class Background:
    """Run fn in a thread; .join() re-raises its exception and returns its result."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self.result = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e
        finally:
            self.done.set()

    def join(self, timeout: float = 10.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)
