"""gilfree.bench (the main job) end to end in smoke-test sizes, and the notebook executes."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from gilfree import bench

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.nosanitizer  # subprocess-heavy and timing-only: the plain build covers it


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gilfree.bench", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_cli_end_to_end(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("matplotlib")
    out = run_cli("--tiny", "--workers", "1,2", "--json", "r.json", "--csv", "r.csv", "--plot", "r.png",
                  "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, bench.JSON_SCHEMA)
    m = report["machine"]
    assert m["cpus"] >= 1 and isinstance(m["gil_enabled"], bool) and m["start_method"]
    cells = report["cells"]
    for scenario in bench.SCENARIOS:
        got = {(c["executor"], c["workers"]) for c in cells if c["scenario"] == scenario}
        assert got == {("serial", 1)} | {(e, w) for e in bench.EXECUTORS[1:] for w in (1, 2)}
    assert all(c["result_ok"] for c in cells)  # every executor computed the serial result
    # the convoy probe reported numbers for each executor
    for c in cells:
        assert c["probe_p99_ms"] >= c["probe_p50_ms"] >= 0
    assert {r["name"] for r in report["messages"]} == {"gilfree.Channel(1024)", "queue.Queue(1024)",
                                                       "multiprocessing.Queue(1024)"}
    assert {r["executor"] for r in report["dispatch"]} == set(bench.EXECUTORS)
    with (tmp_path / "r.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(cells)
    width, height = png_size(tmp_path / "r.png")
    assert width == 1500 and height == 720
    assert "GIL enabled" in out.stdout or "GIL DISABLED" in out.stdout
    assert "cpu_python" in out.stdout and "messages" in out.stdout


@pytest.mark.parametrize("args,needle", [(["--bogus"], "unrecognized arguments"),
                                         (["--workers", "0"], "positive"),
                                         (["--workers", "a,b"], "integers"),
                                         (["--scenario", "nope"], "unknown scenario"),
                                         (["--repeat", "0"], "--repeat"),
                                         (["--quick", "--full"], "not allowed")])
def test_bad_flags_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert needle in out.stderr


def test_run_api_and_report() -> None:
    report = bench.run(["io_sleep", "cpu_native"], [1], sizes=bench.TINY)
    assert {c.scenario for c in report.cells} == {"io_sleep", "cpu_native"}
    assert "io_sleep" in report.table()
    assert json.loads(report.to_json())["schema"] == "gilfree.bench/1"
    with pytest.raises(ValueError):
        bench.run(["nope"])
    with pytest.raises(ValueError):
        bench.run(workers=[0])


def test_notebook_executes() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    path = ROOT / "benchmarks" / "gil_effects.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it with outputs cleared"
    os.environ["GILFREE_NOTEBOOK_TINY"] = "1"
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(path.parent)}})
        client.execute()  # raises CellExecutionError on any cell error
    finally:
        os.environ.pop("GILFREE_NOTEBOOK_TINY", None)
        (path.parent / "gil_effects.png").unlink(missing_ok=True)
