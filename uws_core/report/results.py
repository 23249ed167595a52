"""Where notebooks write their outputs, and the run settings they share.

Every notebook reads its scale from one environment variable (``UWS_SCALE``: ``laptop``, the
default, or ``paper``) and writes a results JSON and its figures under ``results/`` (``UWS_RESULTS``
overrides), so that ``make reproduce`` leaves one folder a reader can browse.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from uws_core.weights.scale import SCALES, scale  # noqa: F401  (re-exported: notebooks read it here)

REPO = Path(__file__).resolve().parents[2]


def results_dir() -> Path:
    """``results/`` of the repository, or ``UWS_RESULTS``; created on first use. A relative ``UWS_RESULTS`` is taken
    from the repository root, not from the working directory: notebook kernels run in ``notebooks/``, so
    ``UWS_RESULTS=results/native`` would otherwise land in ``notebooks/results/native`` for the notebooks and in
    ``results/native`` for the ledger that reads them."""
    env = os.environ.get("UWS_RESULTS", "").strip()
    path = REPO / "results" if not env else Path(env) if Path(env).is_absolute() else REPO / env
    (path / "figures").mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


def save_results(notebook: str, results: dict) -> Path:
    """Write ``results/<notebook>.json`` with the run's scale, time and library versions."""
    import torch

    payload = {
        "notebook": notebook,
        "scale": scale(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "results": _jsonable(results),
    }
    path = results_dir() / f"{notebook}.json"
    path.write_text(json.dumps(payload, indent=1, allow_nan=False))
    return path


def load_results(notebook: str) -> dict:
    """Read back what :func:`save_results` wrote; a missing file names the notebook to run."""
    path = results_dir() / f"{notebook}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebooks/{notebook}.ipynb first")
    return json.loads(path.read_text())


def save_figure(fig, name: str) -> Path:
    """Save a matplotlib figure as ``results/figures/<name>.png`` (150 dpi)."""
    path = results_dir() / "figures" / f"{name}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
