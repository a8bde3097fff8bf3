"""CPython's own concurrent.futures executor tests, run against gilfree.ThreadPool and gilfree.ProcessPool
(see tests/compat/cpython_cf.py, which lists and explains the few that differ by design). Runs where the interpreter ships its test suite with test_concurrent_futures as
a package (CPython 3.13+, as pyenv installs it); CI's 3.13 run includes it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SANITIZER

RUNNER = Path(__file__).parent / "compat" / "cpython_cf.py"


def _has_suite() -> bool:
    try:
        return importlib.util.find_spec("test.test_concurrent_futures.test_thread_pool") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not _has_suite(), reason="this interpreter does not ship test.test_concurrent_futures")
@pytest.mark.skipif(sys.version_info < (3, 13) or sys.version_info.releaselevel != "final",
                    reason="the suite as CPython 3.13+ releases ship it (a prerelease's differs)")
@pytest.mark.skipif(bool(SANITIZER), reason="45 interpreters under a sanitizer: too slow for CI")
def test_cpython_thread_pool_suite_passes() -> None:
    ids = subprocess.run([sys.executable, str(RUNNER), "--list"], capture_output=True, text=True, check=True,
                         timeout=120).stdout.split()
    assert len(ids) == 45  # the whole ThreadPool part of the suite (43 run, 2 different by design)
    out = subprocess.run([sys.executable, str(RUNNER)], capture_output=True, text=True, timeout=1800)
    summary = out.stdout.strip().splitlines()[-1]
    assert out.returncode == 0, out.stdout[-6000:]
    assert summary.startswith("43 passed, 0 failed"), summary


@pytest.mark.skipif(not _has_suite(), reason="this interpreter does not ship test.test_concurrent_futures")
@pytest.mark.skipif(sys.version_info < (3, 13) or sys.version_info.releaselevel != "final",
                    reason="the suite as CPython 3.13+ releases ship it (a prerelease's differs)")
@pytest.mark.skipif(bool(SANITIZER), reason="141 interpreters starting worker processes under a sanitizer")
def test_cpython_process_pool_suite_passes() -> None:
    """The ProcessPool classes (fork, spawn and forkserver) of the same modules plus test_process_pool."""
    ids = subprocess.run([sys.executable, str(RUNNER), "--process", "--list"], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert len(ids) == 141
    out = subprocess.run([sys.executable, str(RUNNER), "--process"], capture_output=True, text=True,
                         timeout=2400)
    summary = out.stdout.strip().splitlines()[-1]
    assert out.returncode == 0, out.stdout[-6000:]
    assert summary.startswith("123 passed, 0 failed, 18 not run"), summary
