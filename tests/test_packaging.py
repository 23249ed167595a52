"""A non-editable install gets the whole library: the wheel built from pyproject.toml holds every module of
uws_core, the claims ledger's text and every shipped pretrained base, and setuptools builds it without warning
that a directory is importable but left out (``packages = ["uws_core"]`` once shipped only the top level)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_wheel_holds_every_module_and_every_shipped_base(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} here; pyproject.toml asks for >= 77")
    src = tmp_path / "src"  # a copy, so the build writes nothing into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "uws_core", src / "uws_core", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path / "dist")], cwd=src, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "absent from the `packages` configuration" not in done.stdout + done.stderr
    wheel, = (tmp_path / "dist").glob("uws-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(src).as_posix() for p in (src / "uws_core").rglob("*")
                if p.is_file() and (p.suffix == ".py" or "pretrained/" in p.as_posix())}
    expected.add("uws_core/report/claims.toml")
    assert len(expected) > 100 and expected <= names, sorted(expected - names)[:10]
