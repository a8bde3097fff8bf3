"""The report: its cells, the machine, the table, JSON and CSV (plots: plot.py)."""

from __future__ import annotations

import csv
import datetime
import importlib
import io
import json
import multiprocessing
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from .._parallel import gil_enabled
from .executors import EXECUTORS, LABELS


@dataclass
class Cell:
    """One figure: a scenario on an executor with a worker count (under one interpreter).

    ``speedup`` is against the serial run of the same interpreter; ``efficiency`` is the executor's own
    scaling, its 1-worker time / (workers x its time) (1.0: perfect; against serial when the run has no
    1-worker figure)."""

    scenario: str
    executor: str
    workers: int
    wall_s: list[float]
    median_s: float
    min_s: float
    max_s: float
    speedup: float = 1.0
    efficiency: float = 1.0
    cpu_utilisation: float = 0.0
    peak_rss_mib: float = 0.0
    probe_p50_ms: float = 0.0
    probe_p99_ms: float = 0.0
    result_ok: bool = True
    interpreter: str = ""


def interpreter_label(machine: dict[str, Any]) -> str:
    """e.g. '3.11.7' or '3.13.0a5+t, GIL off'."""
    t = "t" if machine.get("build") == "free-threaded" else ""
    label = f"{machine['python']}{t}"
    if t:
        label += f", GIL {'on' if machine['gil_enabled'] else 'off'}"
    return label


@dataclass
class Report:
    machine: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    dispatch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    io_sockets: list[dict[str, Any]] = field(default_factory=list)
    others: list[Report] = field(default_factory=list)  # the same run under other interpreters (--python)

    def interpreters(self) -> list[str]:
        return [interpreter_label(self.machine), *(interpreter_label(o.machine) for o in self.others)]

    def all_cells(self) -> list[Cell]:
        """This interpreter's cells and then the other interpreters', each labelled with its interpreter."""
        return [*self.cells, *(c for o in self.others for c in o.cells)]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "gilfree.bench/2", "machine": self.machine, "cells": [asdict(c) for c in self.all_cells()],
                "messages": self.messages, "dispatch": self.dispatch, "io_sockets": self.io_sockets,
                "warnings": self.warnings,
                "interpreters": [{"label": interpreter_label(r.machine), "machine": r.machine,
                                  "messages": r.messages, "dispatch": r.dispatch, "io_sockets": r.io_sockets,
                                  "warnings": r.warnings}
                                 for r in (self, *self.others)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        label = interpreter_label(d["machine"])
        cells = [Cell(**c) for c in d["cells"] if c.get("interpreter", label) == label]
        return cls(d["machine"], cells, d["messages"], d["dispatch"], d["warnings"], d.get("io_sockets", []))

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def to_csv(self, path: str) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["interpreter", "scenario", "executor", "workers", "median_s", "min_s", "max_s", "speedup",
                        "efficiency", "cpu_utilisation", "peak_rss_mib", "probe_p50_ms", "probe_p99_ms"])
            for c in self.all_cells():
                w.writerow([c.interpreter, c.scenario, c.executor, c.workers, f"{c.median_s:.6f}",
                            f"{c.min_s:.6f}", f"{c.max_s:.6f}", f"{c.speedup:.3f}", f"{c.efficiency:.3f}",
                            f"{c.cpu_utilisation:.3f}", f"{c.peak_rss_mib:.1f}", f"{c.probe_p50_ms:.3f}",
                            f"{c.probe_p99_ms:.3f}"])

    def column_label(self, c: Cell) -> str:
        """The executor's name, with its interpreter when the report holds several: 'threading [3.13t, GIL
        off]'."""
        name = LABELS[c.executor]
        return f"{name} [{c.interpreter}]" if self.others else name

    def table(self) -> str:
        m = self.machine
        out = io.StringIO()
        out.write(f"gilfree.bench — {m['date']} — {m['cpu']} ({m['cpus']} CPUs), Python {m['python']} "
                  f"[{m['build']}], GIL {'enabled' if m['gil_enabled'] else 'DISABLED'}, "
                  f"multiprocessing start method: {m['start_method']}\n")
        for o in self.others:
            om = o.machine
            out.write(f"  also: Python {om['python']} [{om['build']}] at {om['executable']}, "
                      f"GIL {'enabled' if om['gil_enabled'] else 'DISABLED'}\n")
        if m.get("plan"):
            p = m["plan"]
            out.write(f"work: {p['tasks']} tasks per scenario (at least 8 per worker of the largest count); "
                      f"sizes calibrated on this machine: the serial runs below\n")
        cells = self.all_cells()
        width = max([30, *(len(self.column_label(c)) for c in cells)])
        for scen in dict.fromkeys(c.scenario for c in cells):
            out.write(f"\n{scen}: {m['descriptions'].get(scen, '')}\n")
            out.write(f"  {'executor':{width}} {'w':>2} {'wall ms (min–max)':>24} {'speedup':>8} {'eff':>5} "
                      f"{'cpu':>5} {'RSS MiB':>8} {'probe p50/p99 ms':>17}\n")
            for c in sorted((c for c in cells if c.scenario == scen),
                            key=lambda c: (c.workers, EXECUTORS.index(c.executor), c.interpreter)):
                wall = f"{c.median_s * 1e3:.1f} ({c.min_s * 1e3:.1f}–{c.max_s * 1e3:.1f})"
                out.write(f"  {self.column_label(c):{width}} {c.workers:2d} {wall:>24} {c.speedup:7.2f}x "
                          f"{c.efficiency:5.2f} {c.cpu_utilisation:5.2f} {c.peak_rss_mib:8.1f} "
                          f"{c.probe_p50_ms:7.2f}/{c.probe_p99_ms:<7.2f}\n")
        for r in (self, *self.others):
            suffix = f" [{interpreter_label(r.machine)}]" if self.others else ""
            if r.messages:
                out.write(f"\nmessages{suffix}: one producer, one consumer, ns per message (median, min–max)\n")
                for row in r.messages:
                    out.write(f"  {row['name']:34} {row['median_ns']:10.0f} ({row['min_ns']:.0f}–"
                              f"{row['max_ns']:.0f})\n")
            if r.dispatch:
                out.write(f"\ndispatch{suffix}: per-task overhead of a no-op task, us (median, min–max)\n")
                for row in r.dispatch:
                    out.write(f"  {LABELS[row['executor']]:30} {row['workers']:2d} {row['median_us']:9.2f} "
                              f"({row['min_us']:.2f}–{row['max_us']:.2f})\n")
            if r.io_sockets:
                out.write(f"\nio_sockets{suffix}: TCP echo on loopback, closed loop, small messages (one run "
                          f"each; benchmarks/bench_io.py for more)\n")
                out.write(f"  {'server':30} {'conns':>5} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
                          f"{'RSS MiB':>8}\n")
                names = {"gilfree": "gilfree select (threads <= 4)", "asyncio": "asyncio", "uvloop": "asyncio + uvloop",
                         "threading": "thread per connection"}
                for row in r.io_sockets:
                    out.write(f"  {names[row['server']]:30} {row['connections']:5d} {row['rps']:9.0f} "
                              f"{row['p50_ms']:7.2f} {row['p99_ms']:7.2f} {row['cpu_us_per_req']:10.1f} "
                              f"{row['rss_mib']:8.1f}\n")
        for r in (self, *self.others):
            for w in r.warnings:
                out.write(f"\nwarning: {w}\n")
        return out.getvalue()

    def plot(self, path: str | None = None) -> Any:
        """The speedup per scenario and the GIL convoy probe against workers, as a matplotlib Figure. With
        ``path`` it is also written there (PNG, SVG or PDF, by extension). Shown inline in Jupyter when it
        is a cell's value; it changes no matplotlib setting (the backend included)."""
        from .plot import figure

        fig = figure(self)
        _display_inline_in_ipython(type(fig))
        if path is not None:
            fig.savefig(path, dpi=100)
        return fig


def _display_inline_in_ipython(figure_type: type) -> None:
    """In IPython/Jupyter, make a Figure that is a cell's value display as a PNG (what matplotlib's inline
    backend registers once pyplot draws; the report's figures are made without pyplot)."""
    ipython_mod: Any = sys.modules.get("IPython")
    ip = ipython_mod.get_ipython() if ipython_mod is not None else None
    if ip is None:
        return
    pylabtools: Any = importlib.import_module("IPython.core.pylabtools")
    png = ip.display_formatter.formatters["image/png"]
    png.for_type(figure_type, lambda fig: pylabtools.print_figure(fig, "png", bbox_inches="tight"))


JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "machine", "cells", "messages", "dispatch", "io_sockets", "warnings", "interpreters"],
    "properties": {
        "schema": {"const": "gilfree.bench/2"},
        "machine": {
            "type": "object",
            "required": ["date", "cpu", "cpus", "python", "build", "gil_enabled", "start_method", "platform",
                         "executable"],
            "properties": {"cpus": {"type": "integer", "minimum": 1}, "gil_enabled": {"type": "boolean"},
                           "python": {"type": "string"}, "start_method": {"type": "string"}},
        },
        "cells": {"type": "array", "items": {
            "type": "object",
            "required": ["scenario", "executor", "workers", "median_s", "min_s", "max_s", "speedup", "efficiency",
                         "cpu_utilisation", "peak_rss_mib", "probe_p50_ms", "probe_p99_ms", "result_ok",
                         "interpreter"],
            "properties": {"executor": {"enum": EXECUTORS}, "workers": {"type": "integer", "minimum": 1},
                           "median_s": {"type": "number", "minimum": 0}, "result_ok": {"const": True},
                           "interpreter": {"type": "string", "minLength": 1}}}},
        "messages": {"type": "array"},
        "dispatch": {"type": "array"},
        "io_sockets": {"type": "array", "items": {
            "type": "object", "required": ["server", "connections", "rps", "p50_ms", "p99_ms"]}},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "interpreters": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["label", "machine"]}},
    },
}


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import sysconfig

    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "build": "free-threaded" if sysconfig.get_config_var("Py_GIL_DISABLED") else "default (GIL)",
            "gil_enabled": gil_enabled(), "start_method": multiprocessing.get_start_method(),
            "platform": platform.platform(), "descriptions": {}}
