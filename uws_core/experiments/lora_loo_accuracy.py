"""Functional test of the leave-one-out LoRA reconstructions (notebook 08) on the laptop population.

:func:`loo_reconstruction_accuracy` evaluates each held-out task's adapter reconstructed from a subspace of
the other adapters (:func:`uws_core.experiments.lora_projection.loo_reconstructions`, each recipe, with / without the mean,
each k) next to the base model, the adapter itself and the mean of the others; :func:`bootstrap_mean_ci`
summarises the per-task accuracies as a mean with a percentile bootstrap interval over tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from uws_core.experiments.lora_projection import K_GRID, RECIPES, LoraStack, loo_reconstructions, mean_of_others

__all__ = ["loo_reconstruction_accuracy", "bootstrap_mean_ci"]


def loo_reconstruction_accuracy(pop, ks: Sequence[int] = K_GRID, recipes: Sequence[str] = RECIPES,
                                add_means: Sequence[bool] = (False, True), tasks: Sequence[str] | None = None,
                                split: str = "test", baselines: bool = True) -> pd.DataFrame:
    """Per-task accuracy of leave-one-out reconstructed adapters of a :class:`uws_core.zoo.lora_zoo.LoraPopulation`.

    For each task (default: all, in records order) its adapter is held out, the subspace is fitted on the
    other adapters and the adapter's reconstruction (each recipe, with / without mean, each k) is evaluated on
    the task's ``split`` with ``pop.evaluate``. With ``baselines`` the base model, the task's own adapter and
    the mean of the other adapters are evaluated too.

    Returns a long DataFrame: task, adapter, method ("base", "own", "mean_of_others", "reconstruction"),
    recipe, add_mean, k, k_eff, accuracy (recipe/add_mean/k are "-"/False/-1 for the baselines). Projections
    run with the population's ``num_threads``. Cost: one ``pop.evaluate`` (about 20 ms of CPU on the laptop
    population) per row, plus about 10 s of CPU for all 72 leave-one-out fits.

    Example: accuracy of "mean + top-16 B@A projection" per task::

        df = loo_reconstruction_accuracy(pop, ks=(16,), recipes=("product",), add_means=(True,), baselines=False)
    """
    records = pop.records.reset_index(drop=True)
    stack = LoraStack.from_states([pop.adapter_state(a) for a in records["adapter"]], list(records["adapter"]),
                                  scaling=pop.scaling)
    chosen = list(records["task"]) if tasks is None else list(tasks)
    missing = [t for t in chosen if t not in set(records["task"])]
    if missing:
        raise KeyError(f"population has no adapter for task {missing[0]!r}")
    heldout = [int(records.index[records["task"] == t][0]) for t in chosen]
    threads = pop.config.num_threads
    recon = loo_reconstructions(stack, heldout, ks, recipes, add_means, num_threads=threads)
    rows = []
    for j in heldout:
        task, name = records.at[j, "task"], records.at[j, "adapter"]
        if baselines:
            mean_state = mean_of_others(stack, j, num_threads=threads)
            for method, state in (("base", None), ("own", pop.adapter_state(name)), ("mean_of_others", mean_state)):
                rows.append(dict(task=task, adapter=name, method=method, recipe="-", add_mean=False, k=-1, k_eff=-1,
                                 accuracy=pop.evaluate(task, state, split=split)))
        for (jj, recipe, add_mean, k), (state, k_eff) in recon.items():
            if jj == j:
                rows.append(dict(task=task, adapter=name, method="reconstruction", recipe=recipe, add_mean=add_mean,
                                 k=k, k_eff=k_eff, accuracy=pop.evaluate(task, state, split=split)))
    return pd.DataFrame(rows)


def bootstrap_mean_ci(x, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``x`` (one value per task) and its percentile bootstrap interval over tasks."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"need a non-empty 1-D finite array, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(lo), float(hi)
