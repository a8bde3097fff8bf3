"""Run CPython's own concurrent.futures executor tests against gilfree's pools.

    python tests/compat/cpython_cf.py [--process] [--list] [TEST_ID ...]

The executor type is swapped before the suite is imported (concurrent.futures.ThreadPoolExecutor is
gilfree.ThreadPool; with --process, ProcessPoolExecutor is gilfree.ProcessPool), then every ThreadPool (or
ProcessPool: the fork, spawn and forkserver classes) test of the modules below runs, each in a process of
its own, as CPython's regrtest would. Prints one line per test and a summary; exit 0 when all passed. Needs
an interpreter that ships its test suite with test/test_concurrent_futures (CPython 3.13 from pyenv does).
"""

from __future__ import annotations

import os
import subprocess
import sys
import unittest

MODULES = ["executor", "test_wait", "test_as_completed", "test_shutdown", "test_thread_pool", "test_init"]
PROCESS_MODULES = ["test_wait", "test_as_completed", "test_shutdown", "test_process_pool", "test_init"]

# The tests that check something gilfree's pool does differently by design (not run: the first would wait
# for its 120 s timeout):
DIFFERENT_BY_DESIGN = {
    # A gilfree Future keeps a reference to its pool (Future.then() continues there), so the futures that
    # map's iterator holds keep the pool alive; the test drops the executor while it holds that iterator
    # and joins the workers, which only ends when dropping the executor shuts it down.
    "test_shutdown.ThreadPoolShutdownTest.test_del_shutdown":
        "a future keeps its pool alive (then() continues there): dropping the executor does not shut it down "
        "while map's futures live",
    # The threads' default names say gilfree ("gilfree_3"); the test matches the standard library's own
    # pattern, "ThreadPoolExecutor-<n>_<i>".
    "test_shutdown.ThreadPoolShutdownTest.test_thread_names_default":
        "default thread names are gilfree_<i>, not ThreadPoolExecutor-<n>_<i>",
}
# ProcessPool tests that cannot pass by design, by test name (each runs under the fork, spawn and forkserver
# classes: 6 x 3 of 141), with the reason:
PROCESS_DIFFERENT_BY_DESIGN: dict[str, str] = {
    "test_del_shutdown": "reads ProcessPoolExecutor's private _call_queue (gilfree's tasks go through a "
                         "ProcessChannel)",
    "test_shutdown_no_wait": "reads ProcessPoolExecutor's private _call_queue (gilfree's tasks go through a "
                             "ProcessChannel)",
    "test_saturation": "its tasks hold a multiprocessing Semaphore, which pickles only while a process is "
                       "being started: gilfree pickles a task in submit (its future fails with that error, and "
                       "no worker is started for it), the standard library later, in its feeder thread",
    "test_processes_terminate": "its tasks hold a multiprocessing Semaphore (see test_saturation); and under "
                                "fork the standard library starts every worker at once, gilfree on demand",
    "test_cancel_futures": "expects some of 50 queued tasks to have counted as running before any worker took "
                           "them; gilfree cancels every task no worker has taken (with workers still starting, "
                           "all 50)",
    "test_python_finalization_error": "makes the second thread a pool starts fail (the standard library's "
                                      "queue feeder); gilfree starts one, its manager, so the pool works and "
                                      "the test's map (mul with one argument) raises TypeError",
}


SWAP_MODULE = """
import os
import concurrent.futures, concurrent.futures.thread, gilfree
if os.environ.get("GILFREE_CF_KIND") == "process":
    import concurrent.futures.process
    concurrent.futures.ProcessPoolExecutor = concurrent.futures.process.ProcessPoolExecutor = gilfree.ProcessPool
    concurrent.futures.ProcessPool = gilfree.ProcessPool
else:
    concurrent.futures.ThreadPoolExecutor = concurrent.futures.thread.ThreadPoolExecutor = gilfree.ThreadPool
    concurrent.futures.ThreadPool = gilfree.ThreadPool
"""
KIND = os.environ.get("GILFREE_CF_KIND", "thread")


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

    if KIND == "process":
        import concurrent.futures.process

        concurrent.futures.ProcessPoolExecutor = gilfree.ProcessPool  # type: ignore[misc]
        concurrent.futures.process.ProcessPoolExecutor = gilfree.ProcessPool  # type: ignore[misc]
        # Tests that start a fresh interpreter import the executor by its class name: there too.
        concurrent.futures.ProcessPool = gilfree.ProcessPool  # type: ignore[attr-defined]
        return

    concurrent.futures.ThreadPoolExecutor = gilfree.ThreadPool  # type: ignore[misc]
    concurrent.futures.thread.ThreadPoolExecutor = gilfree.ThreadPool  # type: ignore[misc]
    # Tests that start a fresh interpreter import the executor by its class name: there too.
    concurrent.futures.ThreadPool = gilfree.ThreadPool  # type: ignore[attr-defined]


def pool_tests() -> list[str]:
    swap()
    loader = unittest.TestLoader()
    ids: list[str] = []
    prefix = "ProcessPool" if KIND == "process" else "ThreadPool"
    for name in PROCESS_MODULES if KIND == "process" else MODULES:
        if name == "executor":
            continue  # a base module: its tests run through the per-feature modules' classes
        module = __import__(f"test.test_concurrent_futures.{name}", fromlist=["*"])
        for case in _flatten(loader.loadTestsFromModule(module)):
            cls = type(case).__name__
            if cls.startswith(prefix):
                ids.append(case.id())
    return ids


def by_design(test_id: str) -> str | None:
    if KIND == "process":
        return PROCESS_DIFFERENT_BY_DESIGN.get(test_id.rsplit(".", 1)[-1])
    return DIFFERENT_BY_DESIGN.get(test_id.replace("test.test_concurrent_futures.", ""))


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
    global KIND
    if argv[:1] == ["--process"]:
        KIND = os.environ["GILFREE_CF_KIND"] = "process"
        argv = argv[1:]
    if argv[:1] == ["--one"]:
        return 0 if run_one(argv[1]) else 1
    ids = pool_tests() if not argv or argv == ["--list"] else argv
    skipped = [i for i in ids if by_design(i)] if not argv else []
    if not argv:
        ids = [i for i in ids if not by_design(i)]
    if argv == ["--list"]:
        print("\n".join(ids))
        return 0
    failed: list[str] = []
    python = swapping_venv()
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    for test_id in ids:
        try:
            proc = subprocess.run([python, __file__, *(["--process"] if KIND == "process" else []), "--one",
                                   test_id], capture_output=True, text=True, timeout=120, env=env)
        except subprocess.TimeoutExpired as e:
            proc = subprocess.CompletedProcess(e.cmd, 1, "", f"timed out after 120 s\n{e.stderr or ''}")
        ok = proc.returncode == 0
        print(("PASS " if ok else "FAIL ") + test_id, flush=True)
        if not ok:
            failed.append(test_id)
            print("    " + proc.stderr.strip().replace("\n", "\n    ")[-3000:], flush=True)
    for test_id in skipped:
        print(f"NOT RUN {test_id}: {by_design(test_id)}")
    print(f"{len(ids) - len(failed)} passed, {len(failed)} failed, {len(skipped)} not run "
          "(different by design)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
