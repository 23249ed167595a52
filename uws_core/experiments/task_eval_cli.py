"""``uws evaluate``: the command line of :mod:`uws_core.experiments.task_eval` (kept here; ``uws_core/cli.py`` only
registers it).

Tasks come from ``--task-data DIR ...`` (local dataset directories, named after the directory) or from
``--data-root ROOT`` (where ``uws download lots_of_loras_tasks --dest ROOT`` put them) with ``--which iid|ood`` (the
authors' 10 + 10, from the manifest) or ``--tasks task280,task190``. What is evaluated: ``--adapter DIR`` (one adapter
on every task), nothing (the base alone), or ``--variants DIR`` laid out as ``DIR/<task id>/<variant>/`` (each
task's own reconstructions, merges, ..., written by :mod:`uws_core.experiments.task_adapters`): one run per variant,
each variant evaluated on its own task.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_evaluate_parser", "run_evaluate"]


def add_evaluate_parser(sub) -> None:
    se = sub.add_parser("evaluate", help="ROUGE-L / exact match of a base + LoRA adapter on Lots-of-LoRAs tasks "
                                         "(test split, resumable, bootstrap CIs)")
    se.add_argument("--base", required=True, help="base model directory or hub id (mistralai/Mistral-7B-Instruct-v0.2)")
    se.add_argument("--base-revision", help="the base's hub commit to load (pins a hub id; e.g. from `uws manifest "
                                            "lock`)")
    se.add_argument("--out", required=True, type=Path, help="results directory (resumable)")
    what = se.add_mutually_exclusive_group()
    what.add_argument("--adapter", type=Path, help="PEFT adapter directory (omit: the base alone)")
    what.add_argument("--variants", type=Path, help="DIR/<task id>/<variant>/: every variant on its own task")
    se.add_argument("--run", help="run name (default: the adapter directory's name, or 'base')")
    se.add_argument("--task-data", nargs="+", metavar="[TASK=]DIR",
                    help="local task dataset directories (named after the directory, or TASK=DIR)")
    se.add_argument("--data-root", type=Path, help="where `uws download lots_of_loras_tasks` put the datasets")
    se.add_argument("--which", choices=("iid", "ood"), help="the authors' 10 IID or 10 OOD tasks (with --data-root)")
    se.add_argument("--tasks", help="comma-separated task ids (with --data-root), e.g. task280,task190")
    se.add_argument("--decoding", choices=("greedy", "authors"), default="greedy",
                    help="greedy (num_beams 1) or the authors' (4 beams, text after the last 'Output:'); 32 new tokens")
    se.add_argument("--batch-size", type=int, default=8)
    se.add_argument("--limit", type=int, help="first N test examples per task")
    se.add_argument("--quantize", choices=("none", "4bit", "auto"), default="none",
                    help="4bit needs bitsandbytes and a GPU; none: bfloat16 on a GPU, float32 on a CPU")
    se.add_argument("--split", default="test")
    se.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the CIs")
    se.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def _task_dirs(args) -> dict[str, Path]:
    from uws_core.experiments.task_data import task_data_dirs, task_list
    from uws_core.experiments.task_eval import TaskEvalError
    from uws_core.weights.manifests import load_manifest

    if args.task_data:
        if args.data_root or args.which or args.tasks:
            raise TaskEvalError("give either --task-data or --data-root with --which / --tasks")
        named = [d.split("=", 1) if "=" in d else (Path(d).name, d) for d in args.task_data]
        return {name: Path(d) for name, d in named}
    if not args.data_root:
        raise TaskEvalError("say which tasks: --task-data DIR ... or --data-root ROOT (--which iid|ood or --tasks)")
    m = load_manifest("lots_of_loras_tasks")
    if args.which:
        ids = task_list(m, args.which)
    elif args.tasks:
        ids = [t.strip() for t in args.tasks.split(",") if t.strip()]
    elif args.variants:
        ids = sorted(p.name for p in args.variants.iterdir() if p.is_dir()) if args.variants.is_dir() else []
    else:
        raise TaskEvalError("with --data-root, name the tasks: --which iid|ood or --tasks task280,...")
    return task_data_dirs(args.data_root, ids, m)


def _variant_runs(root: Path, tasks: list[str]) -> dict[str, dict[str, Path]]:
    """``{variant: {task: adapter dir}}`` from ``root/<task>/<variant>/``; every variant must exist for every task."""
    from uws_core.experiments.task_eval import TaskEvalError

    runs: dict[str, dict[str, Path]] = {}
    for t in tasks:
        d = root / t
        if not d.is_dir():
            raise TaskEvalError(f"variants directory {root}: no folder for task {t}")
        for v in sorted(p for p in d.iterdir() if p.is_dir()):
            runs.setdefault(v.name, {})[t] = v
    for v, by_task in runs.items():
        lacking = [t for t in tasks if t not in by_task]
        if lacking:
            raise TaskEvalError(f"variants directory {root}: variant {v!r} is missing for task(s) {lacking}")
    if not runs:
        raise TaskEvalError(f"variants directory {root}: no variant folders under {root}/<task>/")
    return runs


def run_evaluate(args: argparse.Namespace) -> str:
    """Run ``uws evaluate``; returns the text to print (one line per run: the mean over tasks with its CI)."""
    from uws_core.experiments.task_eval import Evaluator, TaskEvalError, evaluate_tasks

    if args.batch_size < 1 or (args.limit is not None and args.limit < 1) or args.n_boot < 1:
        raise TaskEvalError("--batch-size, --limit and --n-boot must be >= 1")
    tasks = _task_dirs(args)
    if args.variants:
        runs = _variant_runs(args.variants, list(tasks))
    else:
        runs = {args.run or (args.adapter.name if args.adapter else "base"): args.adapter}
    ev = Evaluator(args.base, quantize=args.quantize, revision=args.base_revision)
    lines = [f"base {args.base}" + (f"@{args.base_revision}" if args.base_revision else "")
             + f" ({ev.precision} on {ev.device}), decoding {args.decoding}, split {args.split}"]
    for run, adapter in runs.items():
        res = evaluate_tasks(ev, tasks, args.out, run, adapter=adapter, decoding=args.decoding,
                             batch_size=args.batch_size, limit=args.limit, split=args.split, n_boot=args.n_boot)
        a = res["summary"].set_index("task").loc["ALL"]
        secs = sum(t["seconds"] for t in res["timing"])
        lines.append(f"{run}: ROUGE-L {a['rougeL']:.1f} [{a['rougeL_lo']:.1f}, {a['rougeL_hi']:.1f}], exact match "
                     f"{a['exact_match']:.1f} [{a['exact_match_lo']:.1f}, {a['exact_match_hi']:.1f}] over "
                     f"{len(tasks)} task(s), {int(a['n'])} examples; {secs:.1f} s; {res['run_dir'] / 'summary.csv'}")
    return "\n".join(lines) + "\n"
