"""Regenerate the README's main-job table and plot from a run on this machine.

    python3 dev.py bench -- --no-progress        (writes bench-results/) then:
    PYTHONPATH=build/<tag>/lib python benchmarks/update_readme.py [--full]

Runs gilfree.bench, writes docs/gil_effects.png, and replaces the README text between the markers
<!-- bench:start --> and <!-- bench:end --> with the dated table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gilfree import bench

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    report = bench.run(full=args.full, progress=True)
    (ROOT / "docs").mkdir(exist_ok=True)
    report.plot(str(ROOT / "docs" / "gil_effects.png"))
    report.to_json(str(ROOT / "docs" / "gil_effects.json"))
    readme = (ROOT / "README.md").read_text()
    if START not in readme or END not in readme:
        raise SystemExit("README has no bench markers")
    body = (f"{START}\n`python -m gilfree.bench{' --full' if args.full else ''}` on {report.machine['date']}: "
            f"{report.machine['cpu']}, {report.machine['cpus']} CPUs, Python {report.machine['python']} "
            f"({report.machine['build']}). Regenerate with `benchmarks/update_readme.py`.\n\n"
            f"```text\n{report.table().rstrip()}\n```\n\n![speedup per executor and the GIL convoy probe]"
            f"(docs/gil_effects.png)\n{END}")
    head, rest = readme.split(START, 1)
    tail = rest.split(END, 1)[1]
    (ROOT / "README.md").write_text(head + body + tail)
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
