"""The project's Jupyter kernel (``make lab``) and the kernelspec the committed notebooks name.

``make lab`` installs the kernel ``uws`` ("uws (.venv)": the virtual environment's python with
ipykernel) into the environment's own prefix (``ipykernel install --sys-prefix``: nothing is written to the
user's home) and starts JupyterLab in ``notebooks/``, where every notebook names that kernel.

Where no ``uws`` kernel is installed (a clean clone that never ran ``make lab``), nothing depends on it:
``uws_core.report.reproduce`` passes ``kernel_name="python3"`` to papermill and nbclient, and the repository's
``conftest.py`` runs nbval in the current environment (``--nbval-current-env``) unless a kernel is named.

``python -m uws_core.report.lab [NOTEBOOK ...]`` sets the kernelspec metadata of the notebooks (default: every
``notebooks/*.ipynb``) and changes nothing else: cells, ids and outputs are kept, the file is rewritten by
nbformat exactly as it was read apart from that one field.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat

__all__ = ["KERNEL_NAME", "DISPLAY_NAME", "KERNELSPEC", "set_kernelspec", "main"]

KERNEL_NAME = "uws"
DISPLAY_NAME = "uws (.venv)"
KERNELSPEC = {"display_name": DISPLAY_NAME, "language": "python", "name": KERNEL_NAME}
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def set_kernelspec(path: Path | str) -> bool:
    """Point one notebook's ``metadata.kernelspec`` at the project kernel; True if the file changed."""
    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as exc:  # nbformat raises ValueError subclasses for bad JSON / schema
        raise ValueError(f"{path}: cannot read the notebook ({exc})") from None
    if dict(nb.metadata.get("kernelspec", {})) == KERNELSPEC:
        return False
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nbformat.write(nb, path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uws_core.report.lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    for p in paths:
        print(f"{p}: {'kernelspec set to ' + KERNEL_NAME if set_kernelspec(p) else 'already ' + KERNEL_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
