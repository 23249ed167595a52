"""Adapters to evaluate on a task, written as PEFT adapter directories: reconstructions of a held-out adapter and
merges of several, laid out as ``<out>/<task id>/<variant>/`` for ``uws evaluate --variants <out>``.

Per held-out adapter j of a :class:`uws_core.experiments.lora_projection.LoraStack` (every basis and mean fitted on
the *other* adapters only; :func:`heldout_variants`):

* ``own``: adapter j itself (rewritten, float32);
* ``mean_of_others``: ``M = mean_{i != j} s_i B_i A_i`` (:func:`uws_core.experiments.lora_projection.mean_of_others`);
* ``<recipe>_<mean|nomean>_k<k>``: the projection of adapter j on the top-k subspace of the others, the authors'
  factor recipe (``factors``) or the replication's product recipe (``product``), with or without the mean
  (:func:`uws_core.experiments.lora_projection.loo_reconstructions`); ``factors_random_...``: the same sizes with
  random orthonormal bases (the control);
* ``basis_only_k<k>``: ``V_k V_k^T (P_j - M)`` without the mean
  (:func:`uws_core.experiments.replication_loo.basis_only_reconstructions`).

Merges of n adapters (:func:`merge_variants`; the replication's 8-task merge): ``merge_mean`` (the mean of the
updates ``s_i B_i A_i``, an exact low-rank pair), ``merge_task_arithmetic_l<lam>`` (``lam`` times their sum) and
``merge_ties_d<density>`` (peft's ``add_weighted_adapter`` "ties" on the factors,
:func:`uws_core.experiments.peft_merge.peft_factor_merge`, weights 1).

Every state is written by :func:`write_adapter_state`: per module the exact pair, zero-padded to one rank (one
``adapter_config.json`` holds one r; zero rows and columns change nothing), ``lora_alpha = scaling * r``; or, when
those padded pairs would hold at least as many numbers as the dense updates (the mean-containing variants at
Mistral-7B's shapes: rank 4096, 9.7 GB as pairs), as a dense delta per base weight key in bfloat16 (1.6 GB;
:mod:`uws_core.weights.dense_delta`), which :class:`uws_core.experiments.task_eval.Evaluator` adds to the base.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from uws_core.experiments.lora_projection import LoraStack, loo_reconstructions, mean_of_others
from uws_core.experiments.peft_merge import peft_factor_merge
from uws_core.experiments.replication_loo import basis_only_reconstructions
from uws_core.weights import safe_paths
from uws_core.weights.dense_delta import DELTA_FILE, DELTA_META, pair_is_larger, write_dense_delta
from uws_core.weights.peft_state import (compact_lora_pair, join_lora_state, peft_weight_key, save_peft_adapter,
                                         split_lora_state)

__all__ = ["write_adapter_state", "heldout_variants", "merge_variants", "write_variants"]


def write_adapter_state(state: dict[str, torch.Tensor], directory: Path | str, like: dict, scaling: float,
                        dense: str = "auto", dense_dtype: torch.dtype = torch.bfloat16, source: str = "") -> Path:
    """Write a PEFT-keyed state (per-module ranks may differ) whose update is ``scaling * B @ A``: as one PEFT
    adapter, or (``dense="auto"`` when the pairs padded to one rank hold at least as many numbers as the dense
    updates, :func:`uws_core.weights.dense_delta.pair_is_larger`; ``"always"``; never with ``"never"``) as a
    dense-delta directory of ``scaling * B @ A`` per base weight key, in ``dense_dtype`` (products in float64)."""
    if dense not in ("auto", "always", "never"):
        raise ValueError(f"dense must be auto, always or never, got {dense!r}")
    pairs = split_lora_state(state, str(directory))
    r = max(1, max(b.shape[1] for b, _ in pairs.values()))
    shapes = {m: (b.shape[0], a.shape[1]) for m, (b, a) in pairs.items()}
    as_dense = dense == "always" or (dense == "auto" and pair_is_larger(shapes, r))
    stale = ("adapter_config.json", "adapter_model.safetensors") if as_dense else (DELTA_META, DELTA_FILE)
    for name in stale:  # a rerun in the other format: the evaluator must not find the old one (fixed names inside)
        (Path(directory) / name).unlink(missing_ok=True)
    if as_dense:
        deltas = {peft_weight_key(m): (scaling * b.double() @ a.double()).to(dense_dtype)  # one rounding per key
                  for m, (b, a) in pairs.items()}
        return write_dense_delta(deltas, directory, scaling, source or str(directory), dense_dtype, pair_rank=r)
    padded = {m: (torch.cat([b, b.new_zeros(b.shape[0], r - b.shape[1])], 1),
                  torch.cat([a, a.new_zeros(r - a.shape[0], a.shape[1])], 0)) for m, (b, a) in pairs.items()}
    return save_peft_adapter(join_lora_state(padded, torch.float32), directory, like, scaling=scaling)


def heldout_variants(stack: LoraStack, j: int, ks: Sequence[int] = (16,), recipes: Sequence[str] = ("factors", "product"),
                     add_means: Sequence[bool] = (False, True), random_control: bool = True,
                     basis_only: bool = True) -> dict[str, tuple[dict, float]]:
    """``{variant name: (PEFT-keyed state, scaling)}`` for held-out adapter ``j`` (see the module doc)."""
    s = float(stack.scalings[j])
    out = {"own": (stack.state(j), s), "mean_of_others": (mean_of_others(stack, j), s)}
    recs = tuple(recipes) + (("factors_random",) if random_control else ())
    for (_, recipe, add_mean, k), (state, _) in loo_reconstructions(stack, [j], ks, recs, add_means).items():
        out[f"{recipe}_{'mean' if add_mean else 'nomean'}_k{k}"] = (state, s)
    if basis_only:
        for (_, k), (state, _) in basis_only_reconstructions(stack, [j], ks).items():
            out[f"basis_only_k{k}"] = (state, s)
    return out


def merge_variants(stack: LoraStack, task_arithmetic_lams: Sequence[float] = (0.3,),
                   ties_densities: Sequence[float] = (0.2,)) -> dict[str, tuple[dict, float]]:
    """``{variant name: (state, scaling 1)}``: merges of every adapter of the stack (see the module doc)."""
    n = len(stack)
    mean_pairs, sum_pairs, ties = {}, {}, {d: {} for d in ties_densities}
    for m in stack.module_keys:
        B, A = stack.factors(m)  # (n, d_out, r), (n, r, d_in)
        w = torch.as_tensor(stack.scalings)
        b_cat = (B * w[:, None, None]).permute(1, 0, 2).reshape(B.shape[1], -1)  # (d_out, n r)
        a_cat = A.reshape(-1, A.shape[2])  # (n r, d_in)
        b, a = compact_lora_pair(b_cat, a_cat)
        mean_pairs[m], sum_pairs[m] = (b / n, a), (b, a)
        for d in ties_densities:
            ties[d][m] = peft_factor_merge(B, A, np.ones(n), stack.scalings, how="ties", density=d)
    out = {"merge_mean": (join_lora_state(mean_pairs, torch.float64), 1.0)}
    for lam in task_arithmetic_lams:
        out[f"merge_task_arithmetic_l{lam:g}"] = (join_lora_state({m: (lam * b, a) for m, (b, a) in
                                                                   sum_pairs.items()}, torch.float64), 1.0)
    for d in ties_densities:
        out[f"merge_ties_d{d:g}"] = (join_lora_state(ties[d], torch.float64), 1.0)
    return out


def write_variants(variants: dict[str, tuple[dict, float]], out: Path | str, task: str, like: dict,
                   dense: str = "auto", dense_dtype: torch.dtype = torch.bfloat16) -> list[Path]:
    """Write each variant to ``out/<task>/<variant>/`` (paths checked inside ``out``), a PEFT adapter or a dense
    delta (:func:`write_adapter_state`)."""
    written = []
    for name, (state, scaling) in variants.items():
        d = safe_paths.contained(out, f"{task}/{name}", f"variant {name} of {task}")
        written.append(write_adapter_state(state, d, like, scaling, dense, dense_dtype, f"{task}/{name}"))
    return written


# ---------------------------------------------------------------------------------------------- paper scale
#: ``--format`` of the command line -> ``write_adapter_state``'s ``dense`` argument
FORMATS = {"auto": "auto", "pair": "never", "dense": "always"}


def _adapter_dirs(root: Path, ids: list[str], extra: dict[str, Path] | None = None) -> dict[str, Path]:
    """task id -> adapter directory: ``extra`` first (adapters outside the manifest), else the manifest's entry."""
    from uws_core.weights.manifests import load_manifest, local_dir

    m = load_manifest("mistral7b_loras").set_index("task_id")
    out = {}
    for t in ids:
        if t in (extra or {}):
            out[t] = Path(extra[t])
            continue
        if t not in m.index:
            raise KeyError(f"task {t!r} has no adapter in data_manifests/mistral7b_loras.csv; pass --extra {t}=DIR")
        d = local_dir(root, m.at[t, "repo_id"])
        if d is None:
            raise FileNotFoundError(f"adapter {m.at[t, 'repo_id']} (task {t}) is not under {root}; run `uws download "
                                    "mistral7b_loras`")
        out[t] = d
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m uws_core.experiments.task_adapters loo|merge ...`` (see docs/paper_scale.md)."""
    from uws_core.experiments.task_data import task_list
    from uws_core.weights.adapters import AdapterSet, read_adapter_config
    from uws_core.weights.manifests import load_manifest, lora_split

    p = argparse.ArgumentParser(prog="python -m uws_core.experiments.task_adapters")
    p.add_argument("what", choices=("loo", "merge"))
    p.add_argument("--adapters-root", type=Path, required=True, help="where `uws download mistral7b_loras` put them")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--which", choices=("iid", "ood"), help="loo: held-out tasks (IID: left out of the 492 train "
                                                           "adapters; OOD: projected on all 492)")
    p.add_argument("--tasks", help="merge: comma-separated task ids merged (e.g. the replication's 8)")
    p.add_argument("--ks", default="16", help="loo: comma-separated k")
    p.add_argument("--extra", action="append", default=[], metavar="TASK=DIR",
                   help="merge: an adapter not in the manifest (the replication's task020, task046)")
    p.add_argument("--format", choices=tuple(FORMATS), default="auto",
                   help="how each variant is written: auto (a PEFT pair, or a dense delta when the pair would hold at "
                        "least as many numbers), pair (always a PEFT adapter), dense (always a dense delta)")
    a = p.parse_args(argv)
    if a.what == "loo" and not a.which:
        p.error("loo needs --which iid|ood")
    if a.what == "merge" and len([t for t in (a.tasks or "").split(",") if t.strip()]) < 2:
        p.error("merge needs --tasks with at least two task ids")
    if any("=" not in e for e in a.extra):
        p.error("--extra takes TASK=DIR")
    extra = dict(e.split("=", 1) for e in a.extra)
    loras = load_manifest("mistral7b_loras")
    if a.what == "merge":
        ids = [t.strip() for t in (a.tasks or "").split(",") if t.strip()]
        dirs = _adapter_dirs(a.adapters_root, ids, extra)
        stack = LoraStack.from_adapter_set(AdapterSet.from_dirs(list(dirs.values()), ids))
        merged = merge_variants(stack)
        for i, (t, d) in enumerate(dirs.items()):  # each task: the merges and its own adapter ("own")
            own = {"own": (stack.state(i), float(stack.scalings[i]))}
            write_variants({**merged, **own}, a.out, t, read_adapter_config(d).raw, FORMATS[a.format])
        return 0
    train = list(lora_split(loras, "train")["task_id"])
    ks = [int(k) for k in a.ks.split(",")]
    for t in task_list(loras, a.which):
        ids = train if a.which == "iid" else train + [t]  # OOD: the held-out adapter appended, fitted on train
        dirs = _adapter_dirs(a.adapters_root, ids)
        stack = LoraStack.from_adapter_set(AdapterSet.from_dirs(list(dirs.values()), ids))
        write_variants(heldout_variants(stack, ids.index(t), ks), a.out, t, read_adapter_config(dirs[t]).raw,
                       FORMATS[a.format])
    return 0


if __name__ == "__main__":
    import sys

    try:
        raise SystemExit(main())
    except (KeyError, OSError, ValueError) as exc:  # refusals name the task, file and key: one line, no traceback
        sys.exit(f"python -m uws_core.experiments.task_adapters: error: "
                 f"{exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}")
