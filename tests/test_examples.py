"""Every script under examples/ runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
ARGS = {"echo_server.py": ["--selftest"]}  # a server: start it, use it, stop it


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    out = subprocess.run([sys.executable, str(path), *ARGS.get(path.name, [])], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
