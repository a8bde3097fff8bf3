"""Run CPython's own concurrent.futures ThreadPoolExecutor tests against gilfree.ThreadPool.

    python tests/compat/cpython_cf.py [--list] [TEST_ID ...]

The executor type is swapped before the suite is imported (concurrent.futures.ThreadPoolExecutor is
gilfree.ThreadPool), then every ThreadPool test of the modules below runs, each in a process of its own,
as CPython's regrtest would. Prints one line per test and a summary; exit 0 when all passed. Needs an
interpreter that ships its test suite with test/test_concurrent_futures (CPython 3.13 from pyenv does).
"""

from __future__ import annotations

import os
import subprocess
import sys
import unittest

MODULES = ["executor", "test_wait", "test_as_completed", "test_shutdown", "test_thread_pool", "test_init"]

# The two tests that check something gilfree's pool does differently by design (not run: the first would
# wait for its 120 s timeout):
DIFFERENT_BY_DESIGN = {
    # gilfree's map is lazy and streaming: its iterator submits as it goes, so it keeps the pool (and its
    # workers) alive; the test drops the executor mid-iteration and joins the workers, which only works when
    # map submitted everything up front.
    "test_shutdown.ThreadPoolShutdownTest.test_del_shutdown":
        "a lazy, streaming map keeps its pool alive while its iterator is alive",
    # The threads' default names say gilfree ("gilfree_3"); the test matches the standard library's own
    # pattern, "ThreadPoolExecutor-<n>_<i>".
    "test_shutdown.ThreadPoolShutdownTest.test_thread_names_default":
        "default thread names are gilfree_<i>, not ThreadPoolExecutor-<n>_<i>",
}


SWAP_MODULE = """
import concurrent.futures, concurrent.futures.thread, gilfree
concurrent.futures.ThreadPoolExecutor = concurrent.futures.thread.ThreadPoolExecutor = gilfree.ThreadPool
concurrent.futures.ThreadPool = gilfree.ThreadPool
"""


def swapping_venv() -> str:
    """A throwaway virtualenv with this gilfree in its site-packages and a .pth that swaps the executor at
    every start: the tests that start a fresh interpreter (``python -I -c ...``, which ignores PYTHONPATH)
    then run gilfree too. Returns its python."""
    import shutil
    import tempfile

    import gilfree

    root = tempfile.mkdtemp(prefix="gilfree-cf-")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", os.path.join(root, "venv")], check=True)
    python = os.path.join(root, "venv", "bin", "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    shutil.copytree(os.path.dirname(gilfree.__file__), os.path.join(purelib, "gilfree"))
    with open(os.path.join(purelib, "_gilfree_cf_swap.py"), "w") as f:
        f.write(SWAP_MODULE)
    with open(os.path.join(purelib, "_gilfree_cf_swap.pth"), "w") as f:
        f.write("import _gilfree_cf_swap\n")
    return python


def swap() -> None:
    import concurrent.futures
    import concurrent.futures.thread

    import gilfree

    concurrent.futures.ThreadPoolExecutor = gilfree.ThreadPool  # type: ignore[misc]
    concurrent.futures.thread.ThreadPoolExecutor = gilfree.ThreadPool  # type: ignore[misc]
    # Tests that start a fresh interpreter import the executor by its class name: there too.
    concurrent.futures.ThreadPool = gilfree.ThreadPool  # type: ignore[attr-defined]


def thread_pool_tests() -> list[str]:
    swap()
    loader = unittest.TestLoader()
    ids: list[str] = []
    for name in MODULES:
        if name == "executor":
            continue  # a base module: its tests run through the per-feature modules' classes
        module = __import__(f"test.test_concurrent_futures.{name}", fromlist=["*"])
        for case in _flatten(loader.loadTestsFromModule(module)):
            cls = type(case).__name__
            if cls.startswith("ThreadPool"):
                ids.append(case.id())
    return ids


def _flatten(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    out: list[unittest.TestCase] = []
    for t in suite:
        out.extend(_flatten(t) if isinstance(t, unittest.TestSuite) else [t])  # type: ignore[list-item]
    return out


def run_one(test_id: str) -> bool:
    swap()  # (the venv's .pth did it already; this keeps --one usable on its own)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0).run(
        unittest.defaultTestLoader.loadTestsFromName(test_id))
    return result.wasSuccessful() and result.testsRun == 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"]:
        return 0 if run_one(argv[1]) else 1
    ids = thread_pool_tests() if not argv or argv == ["--list"] else argv
    if not argv:
        ids = [i for i in ids if i.replace("test.test_concurrent_futures.", "") not in DIFFERENT_BY_DESIGN]
    if argv == ["--list"]:
        print("\n".join(ids))
        return 0
    failed: list[str] = []
    python = swapping_venv()
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    for test_id in ids:
        proc = subprocess.run([python, __file__, "--one", test_id], capture_output=True, text=True,
                              timeout=120, env=env)
        ok = proc.returncode == 0
        print(("PASS " if ok else "FAIL ") + test_id, flush=True)
        if not ok:
            failed.append(test_id)
            print("    " + proc.stderr.strip().replace("\n", "\n    ")[-3000:], flush=True)
    print(f"{len(ids) - len(failed)} passed, {len(failed)} failed, {len(DIFFERENT_BY_DESIGN)} not run "
          "(different by design)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
