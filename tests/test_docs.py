"""The documentation builds with no warning, its examples (pages and docstrings) run, and every public name
has an entry. The same build as ``python3 dev.py docs``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import gilfree
from gilfree import gpu, kernels, rx

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.nosanitizer


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sphinx", reason="sphinx comes with the test extra")
    out = tmp_path_factory.mktemp("docs")
    for builder in ("html", "doctest"):
        cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder, "-d",
               str(out / "doctrees"), str(ROOT / "docs"), str(out / builder)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=dict(os.environ))
        assert r.returncode == 0, f"sphinx -b {builder} failed:\n{r.stdout}\n{r.stderr}"
    return out


def documented(built: Path) -> set[str]:
    from sphinx.util.inventory import InventoryFile

    with open(built / "html" / "objects.inv", "rb") as f:
        inv = InventoryFile.load(f, "", os.path.join)
    return {name for entries in inv.values() for name in entries}


def test_docs_build_without_warnings_and_examples_pass(built: Path) -> None:
    report = (built / "doctest" / "output.txt").read_text()
    assert "0 failures in tests" in report
    assert int(report.split("Doctest summary")[1].split("tests")[0].split()[-1]) >= 50


def test_every_public_name_has_an_entry(built: Path) -> None:
    names = documented(built)
    expected = {f"gilfree.{n}" for n in gilfree.__all__}
    expected |= {f"gilfree.kernels.{n}" for n in
                 ("count_primes", "mandelbrot", "monte_carlo_pi", "sum_squares", "sleep", "read_files")}
    expected |= {f"gilfree.rx.{n}" for n in rx.__all__} if hasattr(rx, "__all__") else {"gilfree.rx.Observable"}
    expected |= {f"gilfree.Channel.{m}" for m in ("send", "recv", "send_nowait", "recv_nowait", "send_many",
                                                  "recv_many", "close", "send_async", "recv_async")}
    expected |= {f"gilfree.ThreadPool.{m}" for m in ("submit", "map", "shutdown", "stats")}
    expected |= {f"gilfree.gpu.{n}" for n in gpu.__all__}
    expected |= {"gilfree.Pipeline.map", "gilfree.Context.with_cancel", "gilfree.Future.then",
                 "gilfree.bench.run", "gilfree.Actor.receive", "gilfree.Ticker.stop"}
    missing = sorted(expected - names)
    assert not missing, f"no documentation entry for: {missing}"
    assert kernels.__doc__


def test_every_public_name_appears_in_an_example() -> None:
    """Each public name (the package's, the kernels', rx's) is used in at least one example that runs: a
    doctest line of the documentation pages or of a docstring."""
    import inspect
    import re

    lines = []
    for page in (ROOT / "docs").glob("*.rst"):
        lines += [ln.strip() for ln in page.read_text().splitlines() if ln.strip().startswith((">>>", "..."))]
    for n in gilfree.__all__:
        doc = inspect.getdoc(getattr(gilfree, n)) or ""
        lines += [ln.strip() for ln in doc.splitlines() if ln.strip().startswith((">>>", "..."))]
    for n in gpu.__all__:
        doc = inspect.getdoc(getattr(gpu, n)) or ""
        lines += [ln.strip() for ln in doc.splitlines() if ln.strip().startswith((">>>", "..."))]
    text = "\n".join(lines)
    names = [*gilfree.__all__, "count_primes", "mandelbrot", "monte_carlo_pi", "sum_squares", "sleep",
             "read_files", *getattr(rx, "__all__", ["Observable"]), *gpu.__all__]
    missing = [n for n in names if not re.search(rf"\b{re.escape(n)}\b", text)]
    assert not missing, f"in no example: {missing}"
