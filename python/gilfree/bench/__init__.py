"""gilfree.bench — what the GIL does to threading, what multiprocessing costs, what native parallel
execution gains, measured on this machine.

    python -m gilfree.bench [--quick | --full] [--workers 1,2,4] [--scenario cpu_python,io_sleep]
                            [--python OTHER_PYTHON ...] [--json PATH] [--csv PATH] [--plot PATH.png]

Every scenario does the same work under every executor (results checked equal): serial; threading
(ThreadPoolExecutor); multiprocessing (ProcessPoolExecutor, start method shown); gilfree processes
(gilfree.ProcessPool, the same start method); gilfree.ThreadPool running Python callables; gilfree native
kernels. The work is sized to the machine: every worker of the largest
worker count gets at least 8 tasks, and the serial runs last about 0.2-0.3 s (--full: 1-1.5 s), calibrated
by a short timed probe. The repetitions are interleaved across the executors, so that whatever else the
machine does falls on all of them alike, and the CPUs free before and during the run are measured (a short
calibration spin, and /proc/stat less the run's own CPU time): a busy machine is named at the top of the
table, in the JSON and on the plot. Each figure is the median of the repetitions with min–max; with it:
speedup versus serial, parallel efficiency (the executor's 1-worker time / (workers x its time)), CPU utilisation (process
CPU time / wall / workers), peak RSS (reset before each measurement), and the GIL convoy probe: while the
executor runs, a probe thread sleeps 1 ms again and again and records how late it wakes (p50/p99).
``--python PATH`` (repeatable) runs the same work under other interpreters (a free-threaded one, say) and
merges their columns, labelled with the interpreter and its GIL status, into one report.

Importable: ``run(scenarios=..., workers=...) -> Report`` with ``.table()``, ``.to_json()``, ``.plot()``.
JSON schema: ``gilfree.bench.JSON_SCHEMA``.
"""

# The package follows the data's path: ``scenarios`` (the work), ``executors`` (how it runs), ``measure``
# (timing, the probe, RSS, the machine's load), ``report`` (table, JSON, CSV), ``plot``, ``cli``; ``run``
# below ties them.

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Callable, Sequence

from . import executors as _executors
from . import scenarios as _scenarios
from .executors import EXECUTORS, LABELS
from .measure import ConvoyProbe, CpuAccount, Figure, busy_threshold, spin_available
from .report import JSON_SCHEMA, Cell, Report, interpreter_label, machine_info
from .scenarios import EXTRA, FULL, QUICK, SCENARIOS, TINY, Plan, Sizes

__all__ = ["EXECUTORS", "FULL", "JSON_SCHEMA", "QUICK", "Report", "SCENARIOS", "TINY", "Cell", "ConvoyProbe",
           "Sizes", "main", "run"]


def _progress(done: int, total: int, what: str, enabled: bool) -> None:
    if not enabled:
        return
    width = 30
    filled = int(width * done / max(1, total))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what[:40]:40}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def _max_workers_for(cpus: int) -> int:
    """The most workers a run may ask for: every executor starts that many threads or processes."""
    return max(64, 16 * cpus)


def _worker_counts(workers: Sequence[int] | None, cpus: int) -> list[int]:
    if workers is None:
        ws, w = [], 1
        while w < cpus:
            ws.append(w)
            w *= 2
        ws.append(cpus)
        return ws
    ws = sorted(set(workers))
    if not ws or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in ws):
        raise ValueError("workers must be positive integers")
    if ws[-1] > _max_workers_for(cpus):
        raise ValueError(f"workers: {ws[-1]} is more than this machine can run sensibly: at most "
                         f"{_max_workers_for(cpus)} here (16 per CPU, at least 64), since every executor starts "
                         f"that many threads or processes and the work is sized to 8 tasks per worker")
    return ws


def run(scenarios: Sequence[str] | None = None, workers: Sequence[int] | None = None, *, full: bool = False,
        repeat: int | None = None, progress: bool = False, sizes: Sizes | None = None,
        pythons: Sequence[str] = (), plan: Plan | None = None, spin: bool = True) -> Report:
    """Run the comparison and return its Report.

    Args:
        scenarios: names from ``SCENARIOS`` and ``EXTRA`` (``"messages"``, ``"dispatch"``, ``"io_sockets"``,
            ``"durable"``, ``"gpu"``) (default: all; ``gpu`` runs only where a GPU is available).
        workers: worker counts (default 1, 2, 4, ... up to the CPUs).
        full: the larger sizes and more repetitions of ``FULL`` (default ``QUICK``).
        repeat: timed repetitions per figure (default the sizes').
        progress: draw a progress bar on stderr.
        sizes: ``QUICK``, ``FULL``, ``TINY`` or your own ``Sizes``.
        pythons: other interpreters to run the same work under (each must import gilfree); their columns
            are merged into the report (``Report.others``).
        plan: the exact work to do (the one another run chose), instead of calibrating here.
        spin: measure the CPUs free before the run with a short calibration spin (0.3 s).

    Raises:
        ValueError: an unknown scenario, a worker count below 1, or ``repeat`` below 1.
    """
    sz = sizes or (FULL if full else QUICK)
    reps = repeat or sz.repeat
    if reps < 1:
        raise ValueError("repeat must be >= 1")
    cpus = len(os.sched_getaffinity(0))
    ws = _worker_counts(workers, cpus)
    chosen = list(scenarios) if scenarios is not None else SCENARIOS + EXTRA
    unknown = [s for s in chosen if s not in SCENARIOS + EXTRA]
    if unknown:
        raise ValueError(f"unknown scenario(s): {', '.join(unknown)} (choose from {', '.join(SCENARIOS + EXTRA)})")
    for p in pythons:
        if not (os.path.isfile(p) and os.access(p, os.X_OK)):
            raise ValueError(f"pythons: {p!r} is not an executable file")
    report = Report(machine_info())
    label = interpreter_label(report.machine)
    if max(ws) > cpus:
        report.warnings.append(f"{max(ws)} workers on {cpus} CPUs: the figures past {cpus} workers measure "
                               f"oversubscription, not scaling")
    main_scens = [s for s in chosen if s in SCENARIOS]
    the_plan = plan or _scenarios.plan(sz, max(ws), main_scens)
    if any(s in _scenarios.FILE_SCENARIOS for s in main_scens) and \
            _scenarios.data_bytes(the_plan) > _scenarios.MAX_DATA_BYTES:
        raise ValueError(f"the file scenarios would write {_scenarios.data_bytes(the_plan) / 2**30:.1f} GiB of data "
                         f"({the_plan.files} files for {max(ws)} workers): at most "
                         f"{_scenarios.MAX_DATA_BYTES / 2**30:.0f} GiB; use fewer workers or leave out "
                         f"{' and '.join(_scenarios.FILE_SCENARIOS)}")
    report.machine["plan"] = the_plan.as_dict()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    free_before = spin_available() if spin else None
    with tempfile.TemporaryDirectory(prefix="gilfree-bench-") as data_dir:
        scen = _scenarios.build(the_plan, data_dir, main_scens)
        cells_per_scen = 1 + (len(EXECUTORS) - 1) * len(ws)
        total = (len(main_scens) * (reps + 2) + ("messages" in chosen) + ("dispatch" in chosen) * len(ws)
                 + ("io_sockets" in chosen) + ("durable" in chosen) + ("gpu" in chosen))
        done = 0
        noisy: list[str] = []
        executors = _executors.make(ws)
        account = CpuAccount(lambda: _executors.worker_pids(executors))
        account.start()
        try:
            for name in main_scens:
                s = scen[name]
                report.machine["descriptions"][name] = s.description
                plan_cells: list[tuple[str, int]] = [("serial", 1)] + [(e, w) for w in ws for e in EXECUTORS[1:]]
                assert len(plan_cells) == cells_per_scen
                figures = []
                _progress(done, total, f"{name}: warm-up", progress)
                expected = None
                for ex, w in plan_cells:
                    fn, pids = _executors.runner(s, ex, w, executors)
                    f = Figure(fn, pids, w)
                    result = f.warm()
                    if expected is None:
                        expected = result
                    if result != expected:
                        raise AssertionError(f"{name}: {LABELS[ex]} x{w} computed {result!r}, serial {expected!r}")
                    figures.append(f)
                done += 1
                # The repetitions interleaved across the executors (in a rotating order), so that whatever else
                # the machine does falls on all of them alike.
                for r in range(reps):
                    _progress(done, total, f"{name}: repetition {r + 1}/{reps}", progress)
                    k = r % len(figures)
                    for f in figures[k:] + figures[:k]:
                        f.once()
                    done += 1
                _progress(done, total, f"{name}: convoy probe", progress)
                probes = [f.probe() for f in figures]
                done += 1
                serial_median = statistics.median(figures[0].walls)
                one_worker = {ex: statistics.median(f.walls) for (ex, w), f in zip(plan_cells, figures) if w == 1}
                for (ex, w), f, (p50, p99) in zip(plan_cells, figures, probes):
                    walls = f.walls
                    med = statistics.median(walls)
                    base = one_worker.get(ex, serial_median)
                    report.cells.append(Cell(name, ex, w, walls, med, min(walls), max(walls), serial_median / med,
                                             base / med / w, f.utilisation, f.rss_mib, p50, p99, True, label))
                    if med > 0 and (max(walls) - min(walls)) / med > 0.10:
                        noisy.append(f"{name}/{LABELS[ex]} x{w} ({(max(walls) - min(walls)) / med:.0%})")
            if "dispatch" in chosen:
                report.dispatch = _executors.dispatch(sz, ws, executors, reps, lambda d: _progress(
                    done + d, total, "dispatch", progress))
                done += len(ws)
            free_during = account.stop()
            if "messages" in chosen:
                _progress(done, total, "messages", progress)
                report.messages = _scenarios.messages(sz, reps)
                done += 1
            if "io_sockets" in chosen:
                _progress(done, total, "io_sockets", progress)
                report.io_sockets = _scenarios.io_sockets(sz)
                done += 1
            if "durable" in chosen:
                _progress(done, total, "durable", progress)
                report.durable = _scenarios.durable(sz, ws)
                done += 1
            if "gpu" in chosen:
                _progress(done, total, "gpu", progress)
                report.gpu = _scenarios.gpu(sz, reps)
                done += 1
            _progress(total, total, "done", progress)
        finally:
            _executors.shutdown(executors)
    report.machine["load"] = _load_verdict(cpus, load_before, free_before, free_during)
    if report.machine["load"]["busy"]:
        report.warnings.insert(0, report.machine["load"]["summary"])
    if noisy:
        report.warnings.append(
            f"{len(noisy)} of {len(report.cells)} figures spread (max - min) over 10% of their median, "
            f"a noisy machine: compare ratios from one run, or use --full. Worst: "
            + ", ".join(sorted(noisy, key=lambda t: -float(t.rsplit("(", 1)[1][:-2]))[:5]))
    for p in pythons:
        report.others.append(_run_under(p, chosen, ws, reps, sz, the_plan))
    return report


def _load_verdict(cpus: int, load_before: float | None, free_before: float | None,
                  free_during: float | None) -> dict[str, Any]:
    """How much of the machine the run had, and whether that makes it a busy machine: the CPUs free in the
    calibration spin before the run and on average during it (/proc/stat less this run's own CPU time)."""
    known = [f for f in (free_before, free_during) if f is not None]
    least = min(known) if known else None
    busy = least is not None and least < busy_threshold(cpus)
    parts = []
    if free_during is not None:
        parts.append(f"{free_during:.1f} of them free during the run")
    if free_before is not None:
        parts.append(f"{free_before:.1f} in the calibration spin before it")
    if load_before is not None:
        parts.append(f"load average {load_before:.1f}")
    summary = f"{cpus} CPUs, " + ", ".join(parts) if parts else f"{cpus} CPUs (free CPU time not measurable here)"
    if busy:
        summary = (f"BUSY MACHINE: {summary}. Other processes took CPU time from this run, so the parallel "
                   f"figures understate what this machine does when quiet (threads and processes may look "
                   f"better or worse than they are): rerun when it is idle")
    return {"cpus": cpus, "free_during": free_during, "free_before": free_before, "loadavg_before": load_before,
            "busy": busy, "summary": summary}


def _run_under(python: str, chosen: list[str], ws: list[int], reps: int, sz: Sizes, the_plan: Plan) -> Report:
    """The same work under another interpreter, in a subprocess; its report comes back as JSON."""
    env = dict(os.environ)
    probe = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_config_var('Py_GIL_DISABLED') or 0)"],
                           capture_output=True, text=True, env=env)
    if probe.returncode == 0 and probe.stdout.strip() == "1":
        env.setdefault("PYTHON_GIL", "0")  # a free-threaded build: measure it with the GIL off, as it is meant
    check = subprocess.run([python, "-c", "import gilfree"], capture_output=True, text=True, env=env)
    if check.returncode != 0:
        raise RuntimeError(f"{python} cannot import gilfree: install it there ({python} -m pip install gilfree, "
                           f"or from a checkout: python3 dev.py bench --python {python}, which builds it for each "
                           f"interpreter)\n{check.stderr.strip().splitlines()[-1] if check.stderr else ''}")
    with tempfile.TemporaryDirectory(prefix="gilfree-bench-other-") as d:
        out = os.path.join(d, "report.json")
        spec = json.dumps({"scenarios": chosen, "workers": ws, "repeat": reps, "sizes": sz.__dict__,
                           "plan": the_plan.as_dict(), "json": out})
        r = subprocess.run([python, "-m", "gilfree.bench.cli", "--child", spec], env=env, text=True,
                           capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"the run under {python} failed:\n{r.stderr[-2000:]}")
        with open(out) as f:
            return Report.from_dict(json.load(f))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (``python -m gilfree.bench``, ``gilfree-bench``)."""
    from .cli import main as cli_main

    return cli_main(argv)


# For code written against the single-module version.
_noop: Callable[..., Any] = _scenarios._noop
