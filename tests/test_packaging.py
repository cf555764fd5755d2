"""The package builds, and the wheel installs and imports in a fresh virtual environment.

``python -m build`` makes the sdist and the wheel from the working tree (in its isolated
build environment, as pip would). The wheel is installed with ``--no-deps --no-index``
into a new virtual environment that sees this environment's packages (torch, numpy)
through a ``.pth`` file but not the repository nor its editable install, and the public
API is imported there from a directory outside the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import stochrnn

ROOT = Path(__file__).resolve().parents[1]
VERSION = stochrnn.__version__


def run(*args: str | Path, cwd: Path) -> str:
    """Run a command with a clean environment, returning stdout; its output on failure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COV"))}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, ROOT, cwd=ROOT)
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    return dist / f"stochrnn-{VERSION}-py3-none-any.whl"


def test_build_makes_a_wheel_and_an_sdist_of_this_version(dist: Path) -> None:
    names = sorted(p.name for p in dist.iterdir())
    assert names == [f"stochrnn-{VERSION}-py3-none-any.whl", f"stochrnn-{VERSION}.tar.gz"]


def test_wheel_holds_every_module_and_the_typed_marker(wheel: Path) -> None:
    package_files = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "stochrnn").rglob("*") if p.is_file()
    }
    expected = {f for f in package_files if f.endswith(".py") or f.endswith("py.typed")}
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name for name in archive.namelist() if name.startswith("stochrnn/")}
    assert "stochrnn/py.typed" in in_wheel
    assert expected <= in_wheel, f"missing from the wheel: {sorted(expected - in_wheel)}"


def test_wheel_metadata_states_the_supported_versions(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"stochrnn-{VERSION}.dist-info/METADATA").decode()
    assert "Requires-Python: >=3.10" in metadata.splitlines()
    assert "Requires-Dist: torch>=2.4" in metadata.splitlines()


def test_sdist_holds_the_project_metadata_and_sources(dist: Path) -> None:
    prefix = f"stochrnn-{VERSION}/"
    with tarfile.open(dist / f"stochrnn-{VERSION}.tar.gz") as archive:
        names = set(archive.getnames())
    for name in ("pyproject.toml", "README.md", "stochrnn/__init__.py", "stochrnn/py.typed"):
        assert prefix + name in names, f"{name} missing from the sdist"


def make_venv_seeing_this_environment(path: Path) -> Path:
    """A venv whose site-packages reach this environment's (for torch) via a .pth file.

    ``--system-site-packages`` would expose the base interpreter's packages, not this
    virtual environment's; a .pth line adds a directory without running the .pth files
    inside it, so the editable install of the repository stays invisible.
    """
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    purelib = run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=path
    ).strip()
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "outer_environment.pth").write_text("\n".join(sorted(dirs)) + "\n")
    return python


def test_wheel_installs_and_imports_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    python = make_venv_seeing_this_environment(tmp_path / "venv")
    pip = (sys.executable, "-m", "pip", "--python", python)
    run(*pip, "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    script = (
        "import stochrnn, torch\n"
        "print(stochrnn.__version__)\n"
        "print(stochrnn.__file__)\n"
        "missing = [name for name in stochrnn.__all__ if not hasattr(stochrnn, name)]\n"
        "assert not missing, missing\n"
        "from stochrnn import *\n"
        "from stochrnn import GumbelSoftmax\n"
        "print(GumbelSoftmax(0.3)(torch.zeros(2, 3)).value.sum().item())\n"
    )
    version, location, total = run(python, "-c", script, cwd=tmp_path).split()
    assert version == VERSION
    assert Path(location).is_relative_to(tmp_path / "venv"), location
    assert float(total) == 2.0
