"""``make lab``: the target installs the project's kernel into the venv and opens notebooks/; every committed
notebook names that kernel; and nothing that executes notebooks needs it to be installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from uws_core.report import lab, reproduce

REPO = Path(__file__).resolve().parents[2]


def test_make_lab_installs_the_kernel_into_the_venv_and_opens_the_notebooks():
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    # -n: print, run nothing; -o: take the venv as installed
    proc = subprocess.run(["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "lab"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    install = next(ln for ln in lines if "ipykernel install" in ln)
    assert "--sys-prefix" in install and "--user" not in install
    assert re.search(rf"--name {lab.KERNEL_NAME}\b", install)
    assert f'--display-name "{lab.DISPLAY_NAME}"' in install
    assert lines[-1] == "cd notebooks && ../.venv/bin/jupyter lab"


def test_every_committed_notebook_names_the_project_kernel():
    paths = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert len(paths) >= 9
    for p in paths:
        assert dict(nbformat.read(p, as_version=4).metadata["kernelspec"]) == lab.KERNELSPEC, p.name


def test_set_kernelspec_changes_only_that_field(tmp_path):
    nb = new_notebook()
    nb.cells.append(new_code_cell("1 + 1", execution_count=1,
                                  outputs=[nbformat.v4.new_output("execute_result", data={"text/plain": "2"},
                                                                  execution_count=1)]))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "a.ipynb"
    nbformat.write(nb, path)
    before = json.loads(path.read_text())
    assert lab.set_kernelspec(path) and not lab.set_kernelspec(path)
    after = json.loads(path.read_text())
    assert after["metadata"]["kernelspec"] == lab.KERNELSPEC
    after["metadata"]["kernelspec"] = before["metadata"]["kernelspec"]
    assert after == before
    (tmp_path / "bad.ipynb").write_text("{")
    with pytest.raises(ValueError, match="bad.ipynb: cannot read"):
        lab.set_kernelspec(tmp_path / "bad.ipynb")


def test_the_installed_kernelspec_runs_this_python(tmp_path):
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(tmp_path), "--name", lab.KERNEL_NAME,
                    "--display-name", lab.DISPLAY_NAME], check=True, capture_output=True, timeout=120)
    spec = json.loads((tmp_path / "share" / "jupyter" / "kernels" / lab.KERNEL_NAME / "kernel.json").read_text())
    assert spec["display_name"] == lab.DISPLAY_NAME and spec["argv"][0] == sys.executable


def _uws_notebook(path: Path) -> Path:
    nb = new_notebook()
    nb.cells.append(new_code_cell("print(6 * 7)"))
    nb.metadata["kernelspec"] = dict(lab.KERNELSPEC)
    nbformat.write(nb, path)
    return path


def test_notebooks_naming_the_kernel_run_where_it_is_not_installed(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager

    if lab.KERNEL_NAME in KernelSpecManager().find_kernel_specs():
        pytest.skip("the uws kernel is installed here: this test is about machines without it")
    path = _uws_notebook(tmp_path / "nb.ipynb")
    reproduce.execute_inplace(path, timeout=120)  # papermill / nbclient: kernel_name="python3"
    assert nbformat.read(path, as_version=4).cells[0].outputs[0].text == "42\n"
    # nbval through the repository's conftest.py: the current environment's kernel
    _uws_notebook(tmp_path / "nb2.ipynb")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "--nbval-lax", "-q", "-p",
                           "no:cacheprovider", "nb2.ipynb"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 passed" in proc.stdout
