"""The command line: python -m gilfree.bench (and gilfree-bench)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from . import __doc__ as DOC
from . import _max_workers_for, run
from .scenarios import EXTRA, SCENARIOS, TINY, Plan, Sizes

OUTPUTS = {"json": (".json",), "csv": (".csv",), "plot": (".png", ".svg", ".pdf")}


def _int_list(text: str) -> list[int]:
    parts = text.split(",")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,4, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be positive integers, got {text!r}")
    return values


def _scenario_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",")]
    bad = [v for v in values if v not in SCENARIOS + EXTRA]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(repr(b) for b in bad)}; choose from {', '.join(SCENARIOS + EXTRA)}")
    return values


def _check_output(ap: argparse.ArgumentParser, flag: str, path: str | None) -> None:
    """Before a minute of work: the extension is known and the directory exists and is writable."""
    if path is None:
        return
    exts = OUTPUTS[flag]
    if not path.lower().endswith(exts):
        ap.error(f"--{flag} {path!r}: the file name must end with {' or '.join(exts)}")
    if os.path.isdir(path):
        ap.error(f"--{flag} {path!r}: is a directory; name a file in it")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        ap.error(f"--{flag} {path!r}: the file exists and is not writable")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        ap.error(f"--{flag} {path!r}: the directory {d} does not exist")
    if not os.access(d, os.W_OK):
        ap.error(f"--{flag} {path!r}: the directory {d} is not writable")


_PROBE = ("import sys\n"
          "if sys.version_info < (3, 11): sys.exit('is Python %d.%d; gilfree needs 3.11 or newer' % sys.version_info[:2])\n"
          "import gilfree, gilfree.bench\n"
          "print('ok')\n")


def _check_python(path: str) -> str | None:
    """Before any work: the interpreter runs, is Python 3.11+ and imports gilfree. None, or why not."""
    import subprocess

    try:
        r = subprocess.run([path, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return f"could not be run: {e}"
    if r.returncode != 0 or r.stdout.strip() != "ok":
        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}, no output"])[-1]
        if "No module named 'gilfree" in last:
            last += f" (install it there: {path} -m pip install gilfree)"
        return f"is not a Python that imports gilfree: {last}"
    return None


def _prog() -> str:
    """How the user called it: ``gilfree-bench`` (the console script) or ``python -m gilfree.bench``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "gilfree-bench" if name.startswith("gilfree-bench") else "python -m gilfree.bench"


def _description() -> str:
    """The package's documentation without its synopsis (argparse prints the usage itself)."""
    text = DOC or ""
    return text.split("\n\n", 2)[2] if text.count("\n\n") >= 2 else text


def _child(spec_text: str) -> int:
    """Run the work another interpreter chose (--python) and write the report as JSON."""
    spec = json.loads(spec_text)
    report = run(spec["scenarios"], spec["workers"], repeat=spec["repeat"], sizes=Sizes(**spec["sizes"]),
                 plan=Plan(**spec["plan"]))
    report.to_json(spec["json"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--child"] and len(args_list) == 2:
        return _child(args_list[1])
    ap = argparse.ArgumentParser(prog=_prog(), description=_description(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, under a minute on 2 cores (default)")
    mode.add_argument("--full", action="store_true", help="larger sizes and more repetitions: steadier")
    mode.add_argument("--tiny", action="store_true", help="smoke-test sizes (seconds; figures meaningless)")
    ap.add_argument("--workers", type=_int_list, help="worker counts, e.g. 1,2,4 (default 1, 2, 4, ... CPUs)")
    ap.add_argument("--scenario", type=_scenario_list,
                    help=f"comma-separated, from {', '.join(SCENARIOS + EXTRA)} (default all)")
    ap.add_argument("--repeat", type=int, help="repetitions per figure (default 5 quick, 9 full; at least 5 "
                                               "recommended)")
    ap.add_argument("--python", action="append", default=[], metavar="PATH",
                    help="also run under this interpreter (repeatable; it must import gilfree; a free-threaded "
                         "one runs with PYTHON_GIL=0 unless set) and merge its columns into the report")
    ap.add_argument("--json", metavar="PATH", help="write the report as JSON (schema gilfree.bench/3)")
    ap.add_argument("--csv", metavar="PATH", help="write the cells as CSV")
    ap.add_argument("--plot", metavar="PATH.png", help="write the speedup and convoy plots (.png, .svg or .pdf; "
                                                       "needs matplotlib)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(args_list)
    if args.repeat is not None and args.repeat < 1:
        ap.error("--repeat must be >= 1")
    for flag in OUTPUTS:
        _check_output(ap, flag, getattr(args, flag))
    if args.plot:
        import importlib.util

        # Only whether it is there: importing it now would add its memory to every RSS figure of the run.
        if importlib.util.find_spec("matplotlib") is None:
            ap.error("--plot needs matplotlib: pip install 'gilfree[bench]'")
    for p in args.python:
        if not (os.path.isfile(p) and os.access(p, os.X_OK)):
            ap.error(f"--python {p!r}: not an executable file")
        why = _check_python(p)
        if why:
            ap.error(f"--python {p!r}: {why}")
    cpus = len(os.sched_getaffinity(0))
    if args.workers and max(args.workers) > _max_workers_for(cpus):
        ap.error(f"--workers {max(args.workers)}: at most {_max_workers_for(cpus)} on this machine ({cpus} CPUs; 16 "
                 f"per CPU, at least 64): every executor starts that many threads or processes, and the work is "
                 f"sized to 8 tasks per worker")
    if args.workers and max(args.workers) > cpus:
        print(f"warning: --workers {max(args.workers)} exceeds the {cpus} CPUs available: those figures measure "
              f"oversubscription, not scaling", file=sys.stderr)
    try:
        report = run(args.scenario, args.workers, full=args.full, repeat=args.repeat,
                     progress=not args.no_progress and sys.stderr.isatty(), sizes=TINY if args.tiny else None,
                     pythons=args.python)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.table())
    if args.json:
        report.to_json(args.json)
    if args.csv:
        report.to_csv(args.csv)
    if args.plot:
        report.plot(args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
