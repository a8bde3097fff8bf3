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
    assert [r["consumers"] for r in report["durable"]] == [1, 2]
    assert all(r["msgs_per_s"] > 0 and r["redeliveries"] >= 0 and r["killed"] in (0, 1) for r in report["durable"])
    assert "durable: gilfree.DurableQueue on SQLite" in out.stdout
    with (tmp_path / "r.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(cells)
    width, height = png_size(tmp_path / "r.png")
    assert width > height > 300  # panels side by side, the legend outside them
    assert m["load"]["cpus"] == m["cpus"] and isinstance(m["load"]["busy"], bool)
    assert "the lesson of this run:" in out.stdout and "columns:\n  w        workers\n" in out.stdout
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
    back = bench.Report.from_dict(report)  # the JSON reads back with both interpreters' columns
    assert len(back.others) == 1 and len(back.all_cells()) == len(report["cells"])
    assert back.table().count("also: Python") == 1


def test_gil_status_in_the_header() -> None:
    from gilfree.bench.report import interpreter_label

    m = {"python": "3.13.0a5+", "build": "free-threaded", "gil_enabled": False}
    assert interpreter_label(m) == "3.13.0a5+t, GIL off"
    assert interpreter_label({"python": "3.12.3", "build": "default (GIL)", "gil_enabled": True}) == "3.12.3"


def test_run_api_and_report() -> None:
    report = bench.run(["io_sleep", "cpu_native"], [1], sizes=bench.TINY)
    assert {c.scenario for c in report.cells} == {"io_sleep", "cpu_native"}
    assert "io_sleep" in report.table()
    assert json.loads(report.to_json())["schema"] == "gilfree.bench/3"
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
    # the first comparison states a verdict computed from its own figures
    import re

    first = next(c for c in nb.cells if c.cell_type == "code" and "def two_threads" in c.source)
    text = "".join(o.get("text", "") for o in first.outputs)
    durable = next(c for c in nb.cells if c.cell_type == "code" and "DurableQueue" in c.source)
    dtext = "".join(o.get("text", "") for o in durable.outputs)
    assert "delivered 2 times" in dtext, dtext  # the killed consumer's job came back, once
    gpu_cell = next(c for c in nb.cells if c.cell_type == "code" and "gpu.available()" in c.source)
    gtext = "".join(o.get("text", "") for o in gpu_cell.outputs)
    assert re.search(r"^(GPU: |no GPU here \()", gtext), gtext  # says which, or why not
    assert re.search(r"4 streams: +\d+\.\d ms", gtext) and "recorded on NVIDIA" in gtext, gtext
    assert any("image/png" in o.get("data", {}) for o in gpu_cell.outputs)
    m = re.search(r"2 threads: (\d+\.\d+)x serial, (.*)", text)
    assert m, text
    x = float(m.group(1))
    assert m.group(2).startswith("no faster") == (x < 1.15), text


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


# ---- a busy machine, the lesson, the names, the plot of any subset --------------------------------------

def test_a_busy_machine_is_named_in_the_table_the_json_and_the_plot(tmp_path: Path) -> None:
    """Other processes spinning on every CPU: the run says it had less than the machine, with the figure."""
    pytest.importorskip("matplotlib")
    cpus = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpus)]
    try:
        time.sleep(0.3)
        report = bench.run(["cpu_python"], [1, 2], sizes=bench.TINY)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    load = report.machine["load"]
    assert load["busy"] is True, load
    assert load["free_during"] is not None and load["free_during"] < cpus - 0.25
    assert load["free_before"] < cpus - 0.25
    assert f"{load['free_during']:.1f} of them free during the run" in load["summary"]
    table = report.table()
    assert table.splitlines()[1].startswith("BUSY MACHINE: ") and "rerun when it is idle" in table
    assert json.loads(report.to_json())["machine"]["load"]["busy"] is True
    fig = report.plot()
    assert "BUSY MACHINE" in fig._suptitle.get_text()


def test_the_runs_own_work_does_not_count_as_a_busy_machine() -> None:
    """CpuAccount subtracts this process's CPU time (all its threads) from what /proc/stat saw busy."""
    from gilfree import kernels
    from gilfree.bench.measure import CpuAccount

    cpus = len(os.sched_getaffinity(0))
    acct = CpuAccount(lambda: [])
    acct.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        kernels.monte_carlo_pi(200_000 * cpus, workers=cpus)
    free = acct.stop()
    assert free is not None and free > cpus - 0.5, free  # the spin was ours: most of the machine stays free


def test_load_verdict() -> None:
    from gilfree.bench import _load_verdict

    quiet = _load_verdict(2, 0.2, 1.97, 1.95)
    assert quiet["busy"] is False and quiet["summary"] == ("2 CPUs, 1.9 of them free during the run, 2.0 in the "
                                                            "calibration spin before it, load average 0.2")
    busy = _load_verdict(2, 2.5, 1.9, 1.3)
    assert busy["busy"] is True and "BUSY MACHINE: 2 CPUs, 1.3 of them free during the run" in busy["summary"]
    assert _load_verdict(16, None, 14.0, None)["busy"] is True   # 14 < 16 - 1.6
    assert _load_verdict(16, None, 14.5, None)["busy"] is False
    assert _load_verdict(4, None, None, None)["busy"] is False   # nothing measurable: not called busy


def _cell(scen: str, ex: str, w: int, speedup: float) -> Any:
    from gilfree.bench import Cell

    return Cell(scen, ex, w, [1.0 / speedup], 1.0 / speedup, 1.0 / speedup, 1.0 / speedup, speedup)


def test_the_lesson_is_computed_from_the_figures() -> None:
    from gilfree.bench import Report
    from gilfree.bench.report import machine_info

    m = machine_info()
    m["gil_enabled"] = True
    r = Report(m, [_cell("cpu_python", "serial", 1, 1.0), _cell("cpu_python", "threading", 2, 0.93),
                   _cell("cpu_python", "multiprocessing", 2, 1.71), _cell("cpu_python", "native kernels", 2, 24.2),
                   _cell("io_sleep", "threading", 2, 1.96)],
               dispatch=[{"executor": "threading", "workers": 2, "median_us": 12.0, "min_us": 11, "max_us": 13},
                         {"executor": "gilfree pool", "workers": 2, "median_us": 0.5, "min_us": 0.4, "max_us": 0.6}])
    lesson = r.lesson()
    assert lesson[0].startswith("pure-Python CPU work, 2 workers: threads 0.9x, no faster than serial: the GIL")
    assert "multiprocessing 1.7x" in lesson[0]
    assert "the same work in C with the GIL released: native kernels 24.2x serial Python (2 workers)" in lesson[1]
    assert "threads 2.0x with 2 workers" in lesson[2]
    assert "0.5 us on the gilfree pool, 24.0x less than on ThreadPoolExecutor" in lesson[3]
    assert "the lesson of this run:" in r.table()
    # 2 threads 18% faster under the GIL is not called "no faster"
    r.cells[1] = _cell("cpu_python", "threading", 2, 1.18)
    assert "threads 1.2x, faster than the GIL allows" in r.lesson()[0]
    # with the GIL off, threads scale and the lesson says why
    r.machine["gil_enabled"] = False
    r.cells[1] = _cell("cpu_python", "threading", 2, 1.9)
    assert "threads 1.9x, faster: this interpreter runs Python threads without the GIL" in r.lesson()[0]
    assert Report(m).lesson() == []


def test_one_set_of_executor_names_everywhere(tmp_path: Path) -> None:
    from gilfree.bench.executors import LABELS

    report = bench.run(["io_sleep", "dispatch"], [1], sizes=bench.TINY)
    names = set(bench.EXECUTORS)
    assert {c.executor for c in report.cells} == names
    assert {r["executor"] for r in report.dispatch} == names
    table = report.table()
    for e in names:
        assert f"\n  {e:17} " in table  # the legend names each one as the rows do
    assert all(LABELS[e] == e for e in names)
    report.to_csv(str(tmp_path / "r.csv"))
    with (tmp_path / "r.csv").open() as f:
        assert {row["executor"] for row in csv.DictReader(f)} == names
    # a report written with the earlier short ids reads back with these names
    d = json.loads(report.to_json())
    old = {"gilfree processes": "processes", "gilfree pool": "gilfree", "native kernels": "native"}
    d["schema"] = "gilfree.bench/2"
    for c in d["cells"]:
        c["executor"] = old.get(c["executor"], c["executor"])
    assert {c.executor for c in bench.Report.from_dict(d).cells} == names


@pytest.mark.parametrize("scenarios,workers", [(["dispatch"], [1, 2]), (["io_sleep"], [1]), (["messages"], [1]),
                                               (["io_sleep", "dispatch"], [2])])
def test_any_subset_plots(scenarios: list[str], workers: list[int]) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    report = bench.run(scenarios, workers, sizes=bench.TINY)
    fig = report.plot()
    assert isinstance(fig, Figure)
    titles = {ax.get_title() for ax in fig.axes}
    if "dispatch" in scenarios:
        assert "dispatch: per-task overhead" in titles
    if "io_sleep" in scenarios:
        assert "io_sleep" in titles


def test_rss_does_not_depend_on_plot(tmp_path: Path) -> None:
    """--plot only checks that matplotlib is installed: it is imported after the run, so its memory is in no
    figure of the run."""
    pytest.importorskip("matplotlib")
    code = ("import sys, gilfree.bench.cli as cli\n"
            "real = cli.run\n"
            "def run(*a, **k):\n"
            "    print('matplotlib imported during the run:', 'matplotlib' in sys.modules)\n"
            "    return real(*a, **k)\n"
            "cli.run = run\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", code, "--tiny", "--scenario", "io_sleep", "--workers", "1",
                        "--plot", str(tmp_path / "p.png"), "--no-progress"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "matplotlib imported during the run: False" in r.stdout
    assert (tmp_path / "p.png").stat().st_size > 0


def test_io_files_is_sized_like_the_cpu_scenarios() -> None:
    from gilfree.bench import QUICK, scenarios

    p = scenarios.plan(QUICK, 2, ["io_files"])
    assert p.file_passes > 1  # 32 reads of 256 KiB from the page cache take a few ms: read each many times
    assert scenarios.plan(QUICK, 2, ["io_sleep"]).file_passes == 1
    report = bench.run(["io_files"], [1], sizes=bench.TINY, plan=scenarios.Plan(**{**p.as_dict(), "file_passes": 3}))
    assert "each 3 times" in report.machine["descriptions"]["io_files"]
    assert all(c.result_ok for c in report.cells)


def test_help_is_for_users() -> None:
    from gilfree.bench import cli

    r = subprocess.run([sys.executable, "-m", "gilfree.bench", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert r.stdout.startswith("usage: python -m gilfree.bench")
    assert "The package follows" not in r.stdout and "scenarios`` (the work)" not in r.stdout
    assert "busy machine" in r.stdout
    old = sys.argv
    try:
        sys.argv = ["/venv/bin/gilfree-bench", "--help"]
        assert cli._prog() == "gilfree-bench"
        sys.argv = ["/x/gilfree/bench/__main__.py"]
        assert cli._prog() == "python -m gilfree.bench"
    finally:
        sys.argv = old
    assert "The package follows" not in (bench.__doc__ or "")


def test_the_readme_describes_the_scenarios_the_code_runs() -> None:
    from gilfree.bench import scenarios

    readme = (ROOT / "README.md").read_text()
    assert set(scenarios.ABOUT) == set(scenarios.SCENARIOS + scenarios.EXTRA)
    for name, about in scenarios.ABOUT.items():
        assert f"| `{name}` | {about} |" in readme, name


def test_the_gpu_scenario_runs_where_a_gpu_is_and_says_why_not_elsewhere() -> None:
    from gilfree import gpu

    avail = gpu.available()
    report = bench.run(["gpu"], [1], sizes=bench.TINY, progress=False)
    d = json.loads(report.to_json())
    assert d["gpu"]["available"] is bool(avail)
    table = report.table()
    if avail:
        assert d["gpu"]["device"] == avail.device and f"gpu: {avail.device}" in table
        rows = {r["streams"]: r for r in d["gpu"]["overlap"]["rows"]}
        assert set(rows) == {1, 4} and all(r["wall_s"]["median"] > 0 for r in rows.values())
        assert d["gpu"]["mandelbrot"]["same_counts"] == 1.0  # the GPU's image is the CPU's
        assert "4 streams" in table and "Mandelbrot" in table
    else:
        assert d["gpu"]["reason"] == avail.reason and f"gpu: not run: {avail.reason}" in table
