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
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Any

from .._parallel import gil_enabled
from .executors import EXECUTORS, LABELS, WHAT

# The table's columns and what they mean (the legend printed with every table, and the docs' table).
COLUMNS = [
    ("w", "workers"),
    ("wall", "median of the repetitions in ms (min–max); the repetitions are interleaved across the executors"),
    ("speedup", "serial wall / this wall"),
    ("eff", "parallel efficiency: the executor's own 1-worker wall / (w x this wall); 1.00 is perfect scaling, "
            "above 1 when noise slowed the 1-worker figure"),
    ("cpu", "CPU seconds of all its threads and worker processes / wall / w; 1.00 keeps w CPUs busy (at 1 "
            "worker the calling thread's submitting and combining add to it, so it can pass 1)"),
    ("RSS", "peak resident MiB, this process and its worker processes"),
    ("probe", "how late a thread sleeping 1 ms wakes while the executor runs, p50/p99 ms: the GIL convoy"),
]

_OLD_IDS = {"processes": "gilfree processes", "gilfree": "gilfree pool", "native": "native kernels"}  # schema /2


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
    durable: list[dict[str, Any]] = field(default_factory=list)
    gpu: dict[str, Any] = field(default_factory=dict)
    others: list[Report] = field(default_factory=list)  # the same run under other interpreters (--python)

    def interpreters(self) -> list[str]:
        return [interpreter_label(self.machine), *(interpreter_label(o.machine) for o in self.others)]

    def all_cells(self) -> list[Cell]:
        """This interpreter's cells and then the other interpreters', each labelled with its interpreter."""
        return [*self.cells, *(c for o in self.others for c in o.cells)]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "gilfree.bench/3", "machine": self.machine, "cells": [asdict(c) for c in self.all_cells()],
                "messages": self.messages, "dispatch": self.dispatch, "io_sockets": self.io_sockets,
                "durable": self.durable, "gpu": self.gpu,
                "warnings": self.warnings,
                "interpreters": [{"label": interpreter_label(r.machine), "machine": r.machine, "cell_count": len(r.cells),
                                  "messages": r.messages, "dispatch": r.dispatch, "io_sockets": r.io_sockets,
                                  "durable": r.durable,
                                  "warnings": r.warnings}
                                 for r in (self, *self.others)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """A report from its JSON (``gilfree.bench/3``, or ``/2`` with its shorter executor ids)."""
        label = interpreter_label(d["machine"])
        interps = d.get("interpreters", [])
        counts = [i.get("cell_count") for i in interps]
        if len(interps) > 1 and None not in counts:  # the cells are in interpreter order: slice them
            starts = [sum(counts[:k]) for k in range(len(counts) + 1)]
            per = [d["cells"][starts[k]:starts[k + 1]] for k in range(len(counts))]
        else:  # (older reports) by label
            per = [[c for c in d["cells"] if c.get("interpreter", i["label"]) == i["label"]] for i in interps] or \
                [[c for c in d["cells"] if c.get("interpreter", label) == label]]
        cells = [Cell(**{**c, "executor": _OLD_IDS.get(c["executor"], c["executor"])}) for c in per[0]]
        dispatch = [{**r, "executor": _OLD_IDS.get(r["executor"], r["executor"])} for r in d["dispatch"]]
        report = cls(d["machine"], cells, d["messages"], dispatch, d["warnings"], d.get("io_sockets", []),
                     d.get("durable", []), d.get("gpu", {}))
        for other, cs in zip(interps[1:], per[1:]):  # the --python columns, each a report of its own
            report.others.append(cls.from_dict({
                "machine": other["machine"], "messages": other.get("messages", []),
                "dispatch": other.get("dispatch", []), "warnings": other.get("warnings", []),
                "io_sockets": other.get("io_sockets", []), "durable": other.get("durable", []), "cells": cs}))
        return report

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
        load = m.get("load")
        if load:
            out.write(f"{'' if load['busy'] else 'machine: '}{load['summary']}\n")
        if m.get("plan"):
            p = m["plan"]
            out.write(f"work: {p['tasks']} tasks per scenario (at least 8 per worker of the largest count); "
                      f"sizes calibrated on this machine: the serial runs below\n")
        cells = self.all_cells()
        if cells:
            out.write(self.legend())
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
                names = {"gilfree": "gilfree Poller loops", "asyncio": "asyncio", "uvloop": "asyncio + uvloop",
                         "threading": "thread per connection"}
                for row in r.io_sockets:
                    out.write(f"  {names[row['server']]:30} {row['connections']:5d} {row['rps']:9.0f} "
                              f"{row['p50_ms']:7.2f} {row['p99_ms']:7.2f} {row['cpu_us_per_req']:10.1f} "
                              f"{row['rss_mib']:8.1f}\n")
        for r in (self, *self.others):
            suffix = f" [{interpreter_label(r.machine)}]" if self.others else ""
            if r.durable:
                out.write(f"\ndurable{suffix}: gilfree.DurableQueue on SQLite, a producer process and N consumer "
                          f"processes, one consumer killed (SIGKILL) halfway\n")
                out.write(f"  {'consumers':>9} {'messages':>9} {'msgs/s':>9} {'redelivered':>11}\n")
                for row in r.durable:
                    out.write(f"  {row['consumers']:9d} {row['messages']:9d} {row['msgs_per_s']:9.0f} "
                              f"{row['redeliveries']:11d}\n")
        if self.gpu:
            out.write("\n" + "\n".join(gpu_lines(self.gpu)) + "\n")
        lesson = self.lesson()
        if lesson:
            out.write("\nthe lesson of this run:\n")
            for line in lesson:
                out.write(f"  {line}\n")
        for r in (self, *self.others):
            for w in r.warnings:
                out.write(f"\nwarning: {w}\n")
        return out.getvalue()

    def legend(self) -> str:
        """What the columns and the executors are."""
        used = [e for e in EXECUTORS if any(c.executor == e for c in self.all_cells())]
        sm = self.machine.get("start_method", "")
        lines = ["columns:"]
        for name, meaning in COLUMNS:
            lines.append(textwrap.fill(meaning, 110, initial_indent=f"  {name:8} ", subsequent_indent=" " * 11))
        lines.append("executors:")
        for e in used:
            extra = f", start method {sm}" if e in ("multiprocessing", "gilfree processes") and sm else ""
            lines.append(f"  {e:17} {WHAT[e]}{extra}")
        return "\n".join(lines) + "\n"

    def lesson(self) -> list[str]:
        """The conclusion computed from this run's figures, in a few lines (empty without the scenarios it
        needs): pure-Python threads against the GIL, processes, native kernels, and the pool's dispatch."""
        lines = []
        for r in (self, *self.others):
            tag = f" [{interpreter_label(r.machine)}]" if self.others else ""

            def best(scen: str, ex: str) -> Cell | None:
                cs = [c for c in r.cells if c.scenario == scen and c.executor == ex]
                return max(cs, key=lambda c: (c.workers, c.speedup)) if cs else None

            th = best("cpu_python", "threading")
            if th is not None:
                gil = r.machine.get("gil_enabled", True)
                if th.speedup < 1.15:
                    why = "no faster than serial: the GIL lets one thread run Python at a time" if gil else                         "no faster than serial, although the GIL is off"
                elif gil:
                    why = "faster than the GIL allows pure Python to be: check the machine's load above"
                else:
                    why = "faster: this interpreter runs Python threads without the GIL"
                procs = [c for c in (best("cpu_python", "multiprocessing"), best("cpu_python", "gilfree processes"))
                         if c is not None]
                ptxt = "; " + ", ".join(f"{c.executor} {c.speedup:.1f}x" for c in procs) + " (no GIL to share, "                     "but they pay to start and to pickle)" if procs else ""
                lines.append(f"pure-Python CPU work{tag}, {th.workers} workers: threads {th.speedup:.1f}x, {why}{ptxt}")
            nat = best("cpu_python", "native kernels")
            if nat is not None:
                lines.append(f"the same work in C with the GIL released{tag}: native kernels {nat.speedup:.1f}x "
                             f"serial Python ({nat.workers} workers)")
            elif (nat := best("cpu_native", "native kernels")) is not None:
                lines.append(f"C code with the GIL released{tag}: native kernels {nat.speedup:.1f}x serial with "
                             f"{nat.workers} workers")
            io = best("io_sleep", "threading")
            if io is not None and io.workers > 1:
                lines.append(f"blocking waits{tag} (io_sleep): threads {io.speedup:.1f}x with {io.workers} workers: the "
                             f"GIL is released while a thread waits, so threads suit I/O")
            if r.dispatch:
                w = max(row["workers"] for row in r.dispatch)
                us = {row["executor"]: row["median_us"] for row in r.dispatch if row["workers"] == w}
                if us.get("gilfree pool") and us.get("threading"):
                    lines.append(f"dispatch{tag}, {w} workers: a task costs {us['gilfree pool']:.1f} us on the gilfree "
                                 f"pool, {us['threading'] / us['gilfree pool']:.1f}x less than on ThreadPoolExecutor "
                                 f"({us['threading']:.1f} us)")
        return lines

    def plot(self, path: str | None = None) -> Any:
        """The speedup per scenario and the GIL convoy probe against workers, as a matplotlib Figure. With
        ``path`` it is also written there (PNG, SVG or PDF, by extension). Shown inline in Jupyter when it
        is a cell's value; it changes no matplotlib setting (the backend included)."""
        from .plot import figure

        fig = figure(self)
        _display_inline_in_ipython(type(fig))
        if path is not None:
            fig.savefig(path, dpi=100, bbox_inches="tight")
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
        "schema": {"const": "gilfree.bench/3"},
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
        "gpu": {"type": "object", "properties": {"available": {"type": "boolean"}},
                "if": {"required": ["available"], "properties": {"available": {"const": True}}},
                "then": {"required": ["device", "overlap", "mandelbrot"]}},
        "durable": {"type": "array", "items": {
            "type": "object", "required": ["consumers", "messages", "msgs_per_s", "redeliveries", "killed"]}},
        "io_sockets": {"type": "array", "items": {
            "type": "object", "required": ["server", "connections", "rps", "p50_ms", "p99_ms"]}},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "interpreters": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["label", "machine"]}},
    },
}


def gpu_lines(g: dict[str, Any]) -> list[str]:
    """The ``gpu`` scenario's lines of the table."""
    if not g.get("available"):
        return [f"gpu: not run: {g.get('reason', 'no GPU')}"]
    ov, m = g["overlap"], g["mandelbrot"]
    rows = {r["streams"]: r for r in ov["rows"]}
    one, four = rows[1]["wall_s"]["median"], rows[4]["wall_s"]["median"]
    return [f"gpu: {g['device']}",
            f"  stream_map, {ov['chunks']} chunks of {ov['chunk_bytes'] / 2**20:g} MiB: 1 stream {one * 1e3:.1f} ms, "
            f"4 streams {four * 1e3:.1f} ms ({one / four:.2f}x); the bound (the largest phase) "
            f"{rows[4]['bound_s'] * 1e3:.1f} ms, reached at {rows[4]['vs_bound'] * 100:.0f}%",
            f"  Mandelbrot {m['size']}x{m['size']}: GPU {m['gpu_with_copy_s']['median'] * 1e3:.2f} ms with the copy "
            f"back, native kernels on {m['cpu_workers']} CPUs {m['cpu_s']['median'] * 1e3:.1f} ms: "
            f"{m['speedup_with_copy']:.0f}x"]


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
