"""gilfree.bench (the main job) end to end in smoke-test sizes, and the notebook executes."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

import gilfree.bench
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
                                                       "multiprocessing.Queue(1024)",
                                                       "gilfree.ProcessChannel(1024)"}
    assert {r["executor"] for r in report["dispatch"]} == set(bench.EXECUTORS)
    servers = {r["server"] for r in report["io_sockets"]}
    assert {"gilfree", "asyncio", "threading"} <= servers
    assert all(r["rps"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in report["io_sockets"])
    assert "io_sockets" in out.stdout
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
                                         (["--workers", "1,,2"], "integers"),
                                         (["--scenario", "io_sleep,,cpu_native"], "unknown scenario"),
                                         (["--json", "r.txt"], "must end with .json"),
                                         (["--csv", "r.json"], "must end with .csv"),
                                         (["--plot", "r.jpg"], ".png or .svg or .pdf"),
                                         (["--plot", "no/such/dir/r.png"], "does not exist"),
                                         (["--python", "/no/such/python"], "not an executable"),
                                         (["--quick", "--full"], "not allowed")])
def test_bad_flags_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    out = run_cli(*args, cwd=tmp_path)  # checked before any work: exits at once
    assert out.returncode == 2
    assert needle in out.stderr
    assert not list(tmp_path.iterdir())


def test_more_workers_than_cpus_warns(tmp_path: Path) -> None:
    too_many = len(os.sched_getaffinity(0)) + 1
    out = run_cli("--tiny", "--scenario", "io_sleep", "--workers", f"1,{too_many}", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"--workers {too_many} exceeds" in out.stderr
    assert "oversubscription" in out.stdout


def test_work_is_sized_to_the_largest_worker_count() -> None:
    from gilfree.bench import scenarios

    for w in (1, 2, 4, 16, 64):
        p = scenarios.plan(bench.TINY, w, [])
        assert p.tasks == max(bench.TINY.min_tasks, 8 * w) == p.sleeps == p.files
    p = scenarios.plan(bench.TINY, 16, ["cpu_python"])
    report = bench.run(["cpu_python", "io_sleep"], [1, 2], sizes=bench.TINY)
    plan = report.machine["plan"]
    assert plan["tasks"] == max(bench.TINY.min_tasks, 16)
    cells = {(c.executor, c.workers): c for c in report.cells if c.scenario == "cpu_python"}
    assert f"({plan['tasks']} tasks)" in report.machine["descriptions"]["cpu_python"]
    # efficiency is the executor's own scaling: its 1-worker time / (workers x its time)
    for ex in bench.EXECUTORS[1:]:
        assert cells[(ex, 1)].efficiency == 1.0
        c2 = cells[(ex, 2)]
        assert abs(c2.efficiency - cells[(ex, 1)].median_s / c2.median_s / 2) < 1e-9


def test_calibration_aims_at_the_serial_target() -> None:
    from gilfree import reference
    from gilfree.bench import scenarios

    n = scenarios._calibrate(reference.count_primes, 0.05, 2000)
    assert n > 2000  # grown from the probe, not a constant; its time is the benchmark's business, not a test's


def test_plot_returns_a_figure_and_leaves_matplotlib_alone(tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    backend = matplotlib.get_backend()
    report = bench.run(["io_sleep"], [1, 2], sizes=bench.TINY)
    fig = report.plot()
    assert isinstance(fig, Figure)
    assert matplotlib.get_backend() == backend
    report.plot(str(tmp_path / "p.svg"))
    assert (tmp_path / "p.svg").read_text().lstrip().startswith("<?xml")


def test_another_interpreter_is_merged_into_one_report(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("matplotlib")
    out = run_cli("--tiny", "--scenario", "io_sleep,cpu_python", "--workers", "1,2", "--python", sys.executable,
                  "--json", "r.json", "--plot", "r.png", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, bench.JSON_SCHEMA)
    assert len(report["interpreters"]) == 2
    per_interp = {}
    for c in report["cells"]:
        per_interp.setdefault(c["interpreter"], []).append(c)
    n = len(report["cells"]) // 2
    assert n == 2 * (1 + (len(bench.EXECUTORS) - 1) * 2)
    # the other interpreter did the same work: the plan is passed, not calibrated again
    assert report["interpreters"][1]["machine"]["plan"] == report["machine"]["plan"]
    label = report["cells"][0]["interpreter"]
    assert f"threading [{label}]" in out.stdout
    assert out.stdout.count("also: Python") == 1


def test_gil_status_in_the_header() -> None:
    from gilfree.bench.report import interpreter_label

    m = {"python": "3.13.0a5+", "build": "free-threaded", "gil_enabled": False}
    assert interpreter_label(m) == "3.13.0a5+t, GIL off"
    assert interpreter_label({"python": "3.12.3", "build": "default (GIL)", "gil_enabled": True}) == "3.12.3"


def test_run_api_and_report() -> None:
    report = bench.run(["io_sleep", "cpu_native"], [1], sizes=bench.TINY)
    assert {c.scenario for c in report.cells} == {"io_sleep", "cpu_native"}
    assert "io_sleep" in report.table()
    assert json.loads(report.to_json())["schema"] == "gilfree.bench/2"
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
    before = set(path.parent.iterdir())
    os.environ["GILFREE_NOTEBOOK_TINY"] = "1"
    os.environ["GILFREE_NOTEBOOK_PYTHON"] = sys.executable  # the comparison cell runs too
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(path.parent)}})
        client.execute()  # raises CellExecutionError on any cell error
    finally:
        os.environ.pop("GILFREE_NOTEBOOK_TINY", None)
        os.environ.pop("GILFREE_NOTEBOOK_PYTHON", None)
    assert set(path.parent.iterdir()) == before, "the notebook wrote files beside itself"
    drawing = [c for c in nb.cells if c.cell_type == "code" and (".plot(" in c.source or "plt.show()" in c.source)]
    assert len(drawing) == 3
    for c in drawing:
        assert any("image/png" in o.get("data", {}) for o in c.outputs), f"no image from: {c.source[:60]!r}"


def test_cli_refuses_impossible_worker_counts_and_bad_pythons_at_once(tmp_path: Any) -> None:
    """--workers 10000 used to start writing ~120 GB of data files; a --python that cannot run, or a --json
    that names a directory, was found only after the whole local run. All are refused before any work."""
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gilfree.bench", "--tiny", "--no-progress", *args],
                              capture_output=True, text=True, timeout=120)

    (tmp_path / "out.json").mkdir()
    before = set(os.listdir(tempfile.gettempdir()))
    for args, why in [(("--workers", "10000", "--scenario", "io_sleep"), "at most"),
                      (("--python", "/bin/false"), "is not a Python that imports gilfree"),
                      (("--python", "/bin/true"), "is not a Python that imports gilfree"),
                      (("--json", str(tmp_path / "out.json")), "is a directory")]:
        t0 = time.monotonic()
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert why in r.stderr, (args, r.stderr)
        assert time.monotonic() - t0 < 30, args
    assert not {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("gilfree-bench")}


def test_data_files_are_written_only_for_the_scenarios_that_read_them(tmp_path: Any) -> None:
    from gilfree.bench import TINY, scenarios

    p = scenarios.plan(TINY, 2, ["io_sleep"])
    scenarios.build(p, str(tmp_path), ["io_sleep"])
    assert os.listdir(tmp_path) == []
    scenarios.build(p, str(tmp_path), ["io_files"])
    assert len(os.listdir(tmp_path)) == p.files
    big = scenarios.plan(TINY, 10000, ["io_files"])
    assert scenarios.data_bytes(big) > scenarios.MAX_DATA_BYTES
    with pytest.raises(ValueError, match="workers"):
        gilfree.bench.run(["io_files"], [10000], sizes=TINY)
