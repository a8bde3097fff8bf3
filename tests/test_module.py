"""The package and the C module: exports, heap types, GIL declaration, typing (mypy --strict over the
stubs, the package and the README's examples), and the README's examples themselves run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

import gilfree
from gilfree import _core

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLES = re.findall(r"```python\n(.*?)```", README, re.S)
Py_TPFLAGS_HEAPTYPE = 1 << 9


def test_all_exports_exist() -> None:
    for name in gilfree.__all__:
        assert hasattr(gilfree, name), name
    assert issubclass(gilfree.ChannelClosed, Exception)
    assert issubclass(gilfree.WouldBlock, Exception)
    assert gilfree.ChannelClosed.__module__ == "gilfree"


def test_heap_types() -> None:
    for tp in (_core.Channel, _core._AsyncOp):
        assert tp.__flags__ & Py_TPFLAGS_HEAPTYPE
    with pytest.raises(TypeError):
        _core._AsyncOp()  # type: ignore[call-arg]


def test_stubs_and_marker_ship_with_the_package() -> None:
    pkg = Path(gilfree.__file__).parent
    assert (pkg / "_core.pyi").exists()
    assert (pkg / "py.typed").exists()


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="needs a free-threaded build")
@pytest.mark.skipif(not hasattr(sys, "_is_gil_enabled"),
                    reason="needs sys._is_gil_enabled and the Py_mod_gil slot (3.13.0b1+), which the prerelease lacks")
def test_import_keeps_the_gil_disabled() -> None:
    code = "import sys, gilfree; ch = gilfree.Channel(1); ch.send(1); print(sys._is_gil_enabled())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 4


# A C block headed "// name.c — build command" is built, with that command, in the directory where the
# Python examples run, so an example that loads the library it builds runs as the README shows it.
C_BLOCKS = re.findall(r"```c\n// (\S+\.c) — (.*?)\n(.*?)```", README, re.S)


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("readme")
    for name, command, body in C_BLOCKS:
        (d / name).write_text(body)
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # the compiler runs uninstrumented
        subprocess.run(command, shell=True, cwd=d, check=True, env=env)
    return d


def test_readme_c_blocks_are_found() -> None:
    assert [name for name, _, _ in C_BLOCKS] == ["kernel.c"]


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index: int, readme_dir: Path) -> None:
    code = EXAMPLES[index]
    if "import numpy" in code:
        pytest.importorskip("numpy", reason="numpy comes with the test extra")
    if "dask" in code:
        if os.environ.get("GILFREE_SANITIZER"):
            pytest.skip("dask's worker processes are not run under the sanitizers")
        pytest.importorskip("dask.distributed", reason="dask[distributed] comes with the test extra")
    if "__main__" in code:  # run as a script, so that worker processes can import its functions
        script = readme_dir / f"readme_example_{index}.py"
        script.write_text(code)
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=readme_dir)
    assert out.returncode == 0, out.stderr


@pytest.mark.nosanitizer
def test_mypy_strict_accepts_stubs_package_and_readme(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy comes with the test extra")
    files = []
    for i, code in enumerate(EXAMPLES):
        f = tmp_path / f"readme_example_{i}.py"
        f.write_text(code)
        files.append(str(f))
    env = dict(os.environ, MYPYPATH=str(ROOT / "python"))
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, "-m", "mypy", "--strict", "--untyped-calls-exclude=distributed",  # dask's API is untyped
           "--cache-dir", str(tmp_path / "cache"),
           "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
           str(ROOT / "python" / "gilfree"), *files]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


MISUSE = """\
import gilfree


def square(x: int) -> int:
    return x * x


with gilfree.ThreadPool(2) as tp, gilfree.ProcessPool(1) as pp:
    ok: int = tp.submit(square, 3).result() + pp.submit(square, 4).result()
    tp.submit(square, "x")
    pp.submit(square, "x")
    tp.submit(square)
    pp.submit(square, 1, 2)
ch: gilfree.Channel[int] = gilfree.Channel(1)
ch.put(1)
"""


def test_mypy_catches_wrong_arguments_to_submit_and_queue_habits(tmp_path: Path) -> None:
    """submit is typed with ParamSpec (both pools): the arguments are checked against the function's."""
    pytest.importorskip("mypy", reason="mypy comes with the test extra")
    f = tmp_path / "misuse.py"
    f.write_text(MISUSE)
    env = dict(os.environ, MYPYPATH=str(ROOT / "python"))
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
                          "--follow-imports=silent", str(f)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    lines = {int(m.group(1)) for m in re.finditer(r"misuse.py:(\d+): error", out.stdout)}
    assert lines == {10, 11, 12, 13, 15}, out.stdout  # every misuse, and not the correct line 9


def test_importing_the_source_tree_without_the_extension_says_so(tmp_path: Any) -> None:
    """From the checkout's python/ directory, without the built extension, the error used to be a misleading
    "circular import"; it names the missing extension and how to build it."""
    import shutil

    src = Path(__file__).resolve().parent.parent / "python" / "gilfree"
    shutil.copytree(src, tmp_path / "gilfree", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    r = subprocess.run([sys.executable, "-c", "import gilfree"], capture_output=True, text=True,
                       cwd=tmp_path, env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(tmp_path)})
    assert r.returncode != 0
    assert "C extension (gilfree._core) is not built" in r.stderr and "pip install ." in r.stderr, r.stderr


def test_pickling_a_channel_points_to_processchannel() -> None:
    import pickle

    with pytest.raises(TypeError, match="gilfree.ProcessChannel"):
        pickle.dumps(gilfree.Channel())
