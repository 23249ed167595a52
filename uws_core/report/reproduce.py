"""Execute every notebook at the current scale (``make reproduce``).

Default: run each ``notebooks/NN_*.ipynb`` with papermill into ``results/executed/``; the notebooks
themselves write ``results/<name>.json`` and ``results/figures/*.png``, and the run ends by writing the
claims ledger ``results/CLAIMS.md`` from them (:mod:`uws_core.report.claims`). With ``--inplace`` the
committed notebooks are re-executed in place and their metadata cleaned (what CI's nbval checks).

With ``--build-populations`` (what ``make reproduce`` runs) the laptop populations are built in the same
schedule: ``--jobs`` slots take population builds (each in its own process, one thread) and notebooks (each
in its own kernel, one thread) by priority, and a notebook starts as soon as the populations it reads
(:func:`population_needs`) are built, instead of after all of them: on 2 cores no slot waits for the
slowest build while a notebook could run.

On a terminal a bar counts the finished tasks and names the ones running (:mod:`uws_core.zoo.progress`); the
kernels talk to this process over IPC sockets (:func:`kernel_config`), not TCP, so ipykernel does not
warn about unencrypted TCP traffic at every notebook.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import nbformat

from uws_core.report.results import REPO, results_dir, scale

log = logging.getLogger("uws.reproduce")
NOTEBOOKS = REPO / "notebooks"
#: start order among the notebooks that are ready: longest first (measured run times, README), so that the
#: two slots finish close together
NOTEBOOK_PRIORITY = {"05": 0, "04": 1, "06": 2, "08": 3, "02": 4, "03": 5, "07": 6, "01": 7, "00": 8}


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


def kernel_config():
    """traitlets config for the kernels that nbclient / papermill start: the IPC transport (Unix sockets next to
    the connection file, reachable by this user only) where the OS has it, so ipykernel's warning "Kernel is
    running over TCP without encryption" (ipykernel/kernelapp.py, ``init_sockets``) has no cause; TCP on
    Windows, which has no IPC transport in zmq. Each call names its own socket path prefix: two kernels
    started at once would otherwise race for the same default ``kernel-ipc-<n>`` files in the working directory."""
    import tempfile
    import uuid

    from traitlets.config import Config

    if os.name != "posix":
        return Config()
    return Config({"KernelManager": {"transport": "ipc",
                                     "ip": os.path.join(tempfile.gettempdir(), f"uws-kernel-{uuid.uuid4().hex[:12]}")}})


#: command-line arguments of every kernel that reproduce starts: the kernel's own log (ipykernel's, not the notebook's
#: outputs or errors, which nbclient reports) from CRITICAL up. Every shutdown starts with a SIGINT
#: (jupyter_client ``KernelManager.shutdown_kernel``: interrupt, then shutdown_request); a kernel still finishing a
#: message then logged "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel." to the terminal (once in the
#: cold ``make reproduce`` of 2026-12-07 23:04 UTC, after 04_merging, which had passed): noise to a reader.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]


def execute_inplace(path: Path, timeout: int | None = 1800) -> None:
    """Execute one notebook in its own directory and write it back with clean metadata."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", config=kernel_config(),
                   extra_arguments=KERNEL_ARGUMENTS, resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(clean_metadata(nb), path)


def execute_to_results(path: Path, timeout: int | None = 1800) -> Path:
    """Execute one notebook with papermill into ``results/executed/``."""
    import papermill as pm

    out = results_dir() / "executed" / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(path), str(out), cwd=str(path.parent), kernel_name="python3",
                        execution_timeout=timeout, progress_bar=False, config=kernel_config(),
                        extra_arguments=KERNEL_ARGUMENTS)
    return out


def population_needs(path: Path) -> list[str]:
    """The populations a notebook reads: every seed (``kind/seed<s>``) of each kind it passes to
    ``populations.load("kind", ...)``, read from its source."""
    from uws_core.zoo.populations import KINDS, population_names

    text = path.read_text()
    kinds = [k for k in KINDS if re.search(r'populations\.load\(\\?"' + k + r'\\?"', text)]
    return population_names(kinds)


def build_population(name: str) -> None:
    """One population in its own process (``python -m uws_core.zoo.populations --only NAME --workers 1``), so
    that a build and a notebook kernel share no interpreter and each computes on one thread."""
    cmd = [sys.executable, "-m", "uws_core.zoo.populations", "--only", name, "--workers", "1"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    for line in done.stdout.splitlines() + done.stderr.splitlines():
        if "sha256" in line or "Error" in line:
            log.info("%s", line)
    if done.returncode:
        raise RuntimeError(f"building population {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def schedule(tasks: dict, needs: dict, jobs: int, progress=None) -> None:
    """Run ``tasks`` (name -> callable, in priority order) on ``jobs`` slots; a task starts when every name in
    ``needs[name]`` has finished. The first error stops new starts and is raised once the running ones end.
    ``progress``: a tqdm bar (or None), updated once per finished task, its postfix naming the running ones."""

    def show(running):
        if progress is not None:
            progress.set_postfix_str("running " + ", ".join(sorted(running.values())) if running else "")

    unknown = {d for ds in needs.values() for d in ds} - set(tasks)
    if unknown:
        raise KeyError(f"schedule: dependencies {sorted(unknown)} are not tasks")
    pending, done, running = list(tasks), set(), {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for name in [n for n in pending if set(needs.get(n, ())) <= done][:jobs - len(running)]:
                pending.remove(name)
                running[pool.submit(tasks[name])] = name
            show(running)
            if not running:
                raise RuntimeError(f"schedule: {pending} wait on each other")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                name = running.pop(fut)
                if fut.exception() is not None:
                    pending.clear()
                    wait(running)
                    raise fut.exception()
                done.add(name)
                if progress is not None:
                    progress.update(1)
            show(running)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uws_core.report.reproduce", description=__doc__)
    parser.add_argument("--inplace", action="store_true", help="re-execute the committed notebooks in place")
    parser.add_argument("--only", default="[0-9][0-9]_*.ipynb", help="glob of notebooks to run")
    parser.add_argument("--jobs", type=int, default=2,
                        help="notebooks executed at once, each in its own kernel process (default 2; at laptop scale "
                             "every kernel runs one thread, so the results are those of a serial run)")
    parser.add_argument("--build-populations", action="store_true",
                        help="build the laptop populations in the same schedule (make reproduce): each notebook "
                             "starts when the populations it reads are built")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per cell before a notebook is stopped (default: 1800 at laptop scale, "
                             "none at paper scale, where one cell may stream hundreds of GB)")
    args = parser.parse_args(argv)
    timeout = args.timeout if args.timeout is not None else (1800 if scale() == "laptop" else None)
    if timeout is not None and timeout <= 0:
        raise SystemExit(f"--timeout must be positive, got {args.timeout}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # its per-notebook input / output / kernel lines: noise
    paths = notebooks(args.only)
    if not paths:
        raise SystemExit(f"no notebook matches {args.only!r} in {NOTEBOOKS}")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    if scale() == "laptop":  # one thread per kernel: bits independent of the core count, no oversubscription
        from uws_core.linalg.numerics import single_thread_kernels

        single_thread_kernels()
    log.info("scale=%s, %d notebooks, %d at a time, kernel threads %s", scale(), len(paths), args.jobs,
             os.environ.get("OMP_NUM_THREADS", "all cores"))

    def run(path: Path) -> None:
        t0 = time.perf_counter()
        target = path if args.inplace else execute_to_results(path, timeout)
        if args.inplace:
            execute_inplace(path, timeout)
        log.info("%-45s %7.1f s  -> %s", path.name, time.perf_counter() - t0, target)

    # each notebook runs in its own kernel process (each build in its own process); the threads only wait
    tasks, needs = {}, {}
    if args.build_populations and scale() == "laptop":
        from uws_core.zoo.populations import population_names

        for name in population_names():  # longest builds first; a LoRA seed > 0 reuses seed 0's base model
            tasks[name] = lambda name=name: build_population(name)
            needs[name] = ["lora/seed0"] if name.startswith("lora/") and name != "lora/seed0" else []
    for path in sorted(paths, key=lambda p: NOTEBOOK_PRIORITY.get(p.name[:2], 99)):
        tasks[path.name] = lambda path=path: run(path)
        needs[path.name] = [n for n in population_needs(path) if n in tasks]
    t_all = time.perf_counter()
    from tqdm.contrib.logging import logging_redirect_tqdm

    from uws_core.zoo import progress

    with progress.bar(len(tasks), "reproduce", unit="task") as bar, logging_redirect_tqdm():
        schedule(tasks, needs, args.jobs, bar)
    log.info("%d tasks done in %.1f s", len(tasks), time.perf_counter() - t_all)
    if not args.inplace:
        from uws_core.report.claims import write_ledger

        log.info("results in %s; claims ledger %s", results_dir(), write_ledger(results_dir()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
