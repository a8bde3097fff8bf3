"""The pictures: speedup against workers per scenario, and the GIL convoy probe against workers.

One line per executor (and per interpreter, dashed or dotted, when the report holds several), so the plot
reads the same at 2 workers and at 16. Built on matplotlib's object API (``Figure``), not pyplot: it
changes no global state, so a notebook keeps its inline backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .executors import EXECUTORS, LABELS
from .report import interpreter_label

if TYPE_CHECKING:
    from .report import Report

COLORS = {"threading": "tab:orange", "multiprocessing": "tab:green", "gilfree processes": "tab:purple",
          "gilfree pool": "tab:blue", "native kernels": "tab:red", "serial": "tab:gray"}
STYLES = ["-", "--", ":", "-."]


def figure(report: Report) -> Any:
    """Speedup against workers, one panel per scenario, then the convoy probe (when a scenario has it), then
    the per-task dispatch cost (when the report has it). Any subset of scenarios and workers plots; a report
    with none of them gives a figure that says so."""
    from matplotlib.figure import Figure

    cells = report.all_cells()
    interps = report.interpreters()
    style = {name: STYLES[i % len(STYLES)] for i, name in enumerate(interps)}
    scens = list(dict.fromkeys(c.scenario for c in cells))
    ws = sorted({c.workers for c in cells})
    dispatch = [(r, row) for r in (report, *report.others) for row in r.dispatch]
    panels = len(scens) + (1 if scens else 0) + (1 if dispatch else 0)
    n = max(1, panels)
    cols = min(3, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(5.2 * cols + 2.2, 3.8 * rows))
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)

    def series(scen: str, ex: str, interp: str) -> list[Any]:
        return sorted((c for c in cells if c.scenario == scen and c.executor == ex and c.interpreter == interp),
                      key=lambda c: c.workers)

    def label(ex: str, interp: str) -> str:
        return f"{LABELS[ex]} [{interp}]" if len(interps) > 1 else LABELS[ex]

    handles: dict[str, Any] = {}
    for ax, scen in zip(axes, scens):
        for interp in interps:
            for ex in EXECUTORS[1:]:
                cs = series(scen, ex, interp)
                if cs:
                    xs = [c.workers for c in cs]
                    ys = [c.speedup for c in cs]
                    # error bars: the speedup at the figure's slowest and fastest repetition
                    lo = [y - c.speedup * c.median_s / c.max_s for y, c in zip(ys, cs)]
                    hi = [c.speedup * c.median_s / max(c.min_s, 1e-12) - y for y, c in zip(ys, cs)]
                    h = ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", markersize=3, capsize=2,
                                    color=COLORS[ex], linestyle=style[interp])
                    handles.setdefault(label(ex, interp), h)
        (ideal,) = ax.plot(ws, ws, linestyle=":", color="grey", linewidth=1)
        handles.setdefault("ideal (speedup = workers)", ideal)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ws, [str(w) for w in ws])
        if max((c.speedup for c in cells if c.scenario == scen), default=1) > 8:
            ax.set_yscale("log")  # native kernels dwarf the rest
        ax.set_title(scen)
        ax.set_xlabel("workers")
        ax.set_ylabel("speedup vs serial")
    k = len(scens)
    if scens:
        ax = axes[k]
        k += 1
        probe_scen = "cpu_python" if "cpu_python" in scens else scens[0]
        for interp in interps:
            for ex in EXECUTORS[1:]:
                cs = series(probe_scen, ex, interp)
                if cs:
                    xs = [c.workers for c in cs]
                    ax.plot(xs, [max(c.probe_p50_ms, 0.01) for c in cs], marker="o", markersize=3, color=COLORS[ex],
                            linestyle=style[interp])
                    ax.plot(xs, [max(c.probe_p99_ms, 0.01) for c in cs], marker="^", markersize=3, color=COLORS[ex],
                            linestyle=style[interp], alpha=0.4)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ws, [str(w) for w in ws])
        ax.set_yscale("log")
        ax.set_xlabel("workers")
        ax.set_ylabel("probe wake-up lateness, ms")
        ax.set_title(f"GIL convoy probe during {probe_scen}\n(circles p50, triangles p99)", fontsize=9)
    if dispatch:
        ax = axes[k]
        k += 1
        for interp_i, r in enumerate((report, *report.others)):
            interp = interpreter_label(r.machine)
            for ex in EXECUTORS[1:]:
                rows_ = sorted((row for row in r.dispatch if row["executor"] == ex), key=lambda row: row["workers"])
                if rows_:
                    xs = [row["workers"] for row in rows_]
                    ys = [row["median_us"] for row in rows_]
                    h = ax.errorbar(xs, ys, yerr=[[y - row["min_us"] for y, row in zip(ys, rows_)],
                                                  [row["max_us"] - y for y, row in zip(ys, rows_)]],
                                    marker="s", markersize=3, capsize=2, color=COLORS[ex], linestyle=style[interp])
                    handles.setdefault(label(ex, interp), h)
        dws = sorted({row["workers"] for _, row in dispatch})
        ax.set_xscale("log", base=2)
        ax.set_xticks(dws, [str(w) for w in dws])
        ax.set_yscale("log")
        ax.set_xlabel("workers")
        ax.set_ylabel("us per no-op task")
        ax.set_title("dispatch: per-task overhead")
    for extra in axes[k:]:
        extra.axis("off")
    if not panels:
        axes[0].text(0.5, 0.5, "no scenarios in this report", ha="center", va="center")
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize=9, frameon=False)
    m = report.machine
    title = f"gilfree.bench {m['date']}: {m['cpu']}, {m['cpus']} CPUs; Python {', '.join(interps)}"
    load = m.get("load")
    if load and load.get("busy"):
        free = load.get("free_during") if load.get("free_during") is not None else load.get("free_before")
        title += f"\nBUSY MACHINE: {free:.1f} of {m['cpus']} CPUs free during the run; rerun on a quiet machine"
    fig.suptitle(title, fontsize=10, color="darkred" if load and load.get("busy") else "black")
    fig.tight_layout()
    return fig
