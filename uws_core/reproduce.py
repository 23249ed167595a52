"""Execute every notebook at the current scale (``make reproduce``).

Default: run each ``notebooks/NN_*.ipynb`` with papermill into ``results/executed/``; the notebooks
themselves write ``results/<name>.json`` and ``results/figures/*.png``, and the run ends by writing the
claims ledger ``results/CLAIMS.md`` from them (:mod:`uws_core.claims`). With ``--inplace`` the
committed notebooks are re-executed in place and their metadata cleaned (what CI's nbval checks).
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from uws_core.results import REPO, results_dir, scale

log = logging.getLogger("uws.reproduce")
NOTEBOOKS = REPO / "notebooks"


def notebooks(pattern: str = "[0-9][0-9]_*.ipynb") -> list[Path]:
    """Numbered notebooks in run order."""
    return sorted(NOTEBOOKS.glob(pattern))


def clean_metadata(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop run-specific metadata (timestamps, papermill state) but keep outputs and counts."""
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    return nb


def execute_inplace(path: Path, timeout: int | None = 1800) -> None:
    """Execute one notebook in its own directory and write it back with clean metadata."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(clean_metadata(nb), path)


def execute_to_results(path: Path, timeout: int | None = 1800) -> Path:
    """Execute one notebook with papermill into ``results/executed/``."""
    import papermill as pm

    out = results_dir() / "executed" / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(path), str(out), cwd=str(path.parent), kernel_name="python3",
                        execution_timeout=timeout, progress_bar=False)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uws_core.reproduce", description=__doc__)
    parser.add_argument("--inplace", action="store_true", help="re-execute the committed notebooks in place")
    parser.add_argument("--only", default="[0-9][0-9]_*.ipynb", help="glob of notebooks to run")
    parser.add_argument("--jobs", type=int, default=2,
                        help="notebooks executed at once, each in its own kernel process (default 2; a kernel's "
                             "thread count does not depend on the others, so the results are those of a serial run)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per cell before a notebook is stopped (default: 1800 at laptop scale, "
                             "none at paper scale, where one cell may stream hundreds of GB)")
    args = parser.parse_args(argv)
    timeout = args.timeout if args.timeout is not None else (1800 if scale() == "laptop" else None)
    if timeout is not None and timeout <= 0:
        raise SystemExit(f"--timeout must be positive, got {args.timeout}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = notebooks(args.only)
    if not paths:
        raise SystemExit(f"no notebook matches {args.only!r} in {NOTEBOOKS}")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    log.info("scale=%s, %d notebooks, %d at a time", scale(), len(paths), args.jobs)

    def run(path: Path) -> None:
        t0 = time.perf_counter()
        target = path if args.inplace else execute_to_results(path, timeout)
        if args.inplace:
            execute_inplace(path, timeout)
        log.info("%-45s %7.1f s  -> %s", path.name, time.perf_counter() - t0, target)

    # each notebook runs in its own kernel process; the threads only wait for them
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for _ in pool.map(run, paths):    # re-raises the first notebook error
            pass
    if not args.inplace:
        from .claims import write_ledger

        log.info("results in %s; claims ledger %s", results_dir(), write_ledger(results_dir()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
