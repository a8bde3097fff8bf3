"""The pictures: speedup against workers per scenario, and the GIL convoy probe against workers.

One line per executor (and per interpreter, dashed or dotted, when the report holds several), so the plot
reads the same at 2 workers and at 16. Built on matplotlib's object API (``Figure``), not pyplot: it
changes no global state, so a notebook keeps its inline backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .executors import EXECUTORS, LABELS

if TYPE_CHECKING:
    from .report import Report

COLORS = {"threading": "tab:orange", "multiprocessing": "tab:green", "processes": "tab:purple", "gilfree": "tab:blue",
          "native": "tab:red", "serial": "tab:gray"}
STYLES = ["-", "--", ":", "-."]


def figure(report: Report) -> Any:
    from matplotlib.figure import Figure

    cells = report.all_cells()
    interps = report.interpreters()
    style = {name: STYLES[i % len(STYLES)] for i, name in enumerate(interps)}
    scens = list(dict.fromkeys(c.scenario for c in cells))
    ws = sorted({c.workers for c in cells})
    n = len(scens) + 1
    cols = min(3, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(5 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)

    def series(scen: str, ex: str, interp: str) -> list[Any]:
        return sorted((c for c in cells if c.scenario == scen and c.executor == ex and c.interpreter == interp),
                      key=lambda c: c.workers)

    def label(ex: str, interp: str) -> str:
        return f"{LABELS[ex]} [{interp}]" if len(interps) > 1 else LABELS[ex]

    for ax, scen in zip(axes.flat, scens):
        for interp in interps:
            for ex in EXECUTORS[1:]:
                cs = series(scen, ex, interp)
                if cs:
                    ax.plot([c.workers for c in cs], [c.speedup for c in cs], marker="o", markersize=3,
                            color=COLORS[ex], linestyle=style[interp], label=label(ex, interp))
        ax.plot(ws, ws, linestyle=":", color="grey", linewidth=1, label="ideal")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ws, [str(w) for w in ws])
        if max((c.speedup for c in cells if c.scenario == scen), default=1) > 8:
            ax.set_yscale("log")  # native kernels dwarf the rest
        ax.set_title(scen)
        ax.set_xlabel("workers")
        ax.set_ylabel("speedup vs serial")
        ax.legend(fontsize=6)
    ax = axes.flat[len(scens)]
    probe_scen = "cpu_python" if "cpu_python" in scens else scens[0]
    for interp in interps:
        for ex in EXECUTORS[1:]:
            cs = series(probe_scen, ex, interp)
            if cs:
                xs = [c.workers for c in cs]
                ax.plot(xs, [max(c.probe_p50_ms, 0.01) for c in cs], marker="o", markersize=3, color=COLORS[ex],
                        linestyle=style[interp], label=f"{label(ex, interp)} p50")
                ax.plot(xs, [max(c.probe_p99_ms, 0.01) for c in cs], marker="^", markersize=3, color=COLORS[ex],
                        linestyle=style[interp], alpha=0.4, label=f"{label(ex, interp)} p99")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ws, [str(w) for w in ws])
    ax.set_yscale("log")
    ax.set_xlabel("workers")
    ax.set_ylabel("probe wake-up lateness, ms")
    ax.set_title(f"GIL convoy probe during {probe_scen}")
    ax.legend(fontsize=5, ncol=2)
    for extra in list(axes.flat)[n:]:
        extra.axis("off")
    m = report.machine
    gil = ", ".join(interps)
    fig.suptitle(f"gilfree.bench {m['date']}: {m['cpu']}, {m['cpus']} CPUs; Python {gil}", fontsize=10)
    fig.tight_layout()
    return fig
