"""Findings with their seed spread: summaries over the populations built from several seeds.

Every laptop population is built from more than one seed (:data:`uws_core.zoo.populations.SEEDS`). A notebook
computes each headline finding on every seed, shows it as mean, spread and range (:func:`spread`,
:func:`format_spread`), and writes the per-seed values into its results file under ``"seeds"``::

    results["seeds"] = {"0": {...}, "1": {...}, ...}   # each: the keys the claims ledger reads, for that seed

The ledger (:mod:`uws_core.report.claims`) evaluates each claim's criterion on every seed; a verdict holds only if
it is the same for every seed, otherwise it reads :data:`SEED_DEPENDENT` (:func:`verdict_over_seeds`).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

__all__ = ["SEED_DEPENDENT", "spread", "format_spread", "verdict_over_seeds", "results_with_seed", "verdicts_per_seed",
           "seed_table"]

SEED_DEPENDENT = "seed-dependent"


def spread(values: Iterable[float]) -> dict:
    """``{"n", "mean", "sd", "min", "max", "values"}`` of per-seed values (sd with ddof=1; 0 for one seed).

    NaN values are refused by name: a finding that could not be computed for a seed is not averaged away."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("spread: no values (no seed was computed)")
    bad = [i for i, v in enumerate(vals) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"spread: non-finite value at seed position(s) {bad}: {vals}")
    arr = np.asarray(vals)
    return {"n": len(vals), "mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(vals) > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max()), "values": vals}


def format_spread(s: dict, fmt: str = "{:.3f}", scale: float = 1.0) -> str:
    """``mean +- sd [min, max] (n seeds)``, each number ``scale`` times its value in ``fmt``."""
    f = lambda x: fmt.format(scale * x)  # noqa: E731
    return f"{f(s['mean'])} +- {f(s['sd'])} [{f(s['min'])}, {f(s['max'])}] ({s['n']} seeds)"


def verdict_over_seeds(verdicts: dict) -> str:
    """The common verdict of ``{seed: verdict}``, or :data:`SEED_DEPENDENT` when the seeds disagree."""
    if not verdicts:
        raise ValueError("verdict_over_seeds: no seed")
    distinct = set(verdicts.values())
    return distinct.pop() if len(distinct) == 1 else SEED_DEPENDENT


def results_with_seed(R: dict, stem: str, payload: dict) -> dict:
    """Loaded result files ``R`` (:func:`uws_core.report.claims.load_all`) with the results of notebook ``stem``
    overlaid by one seed's payload (the keys that seed recomputed; its own ``"seeds"`` emptied)."""
    entry = dict(R[stem])
    entry["results"] = {**entry["results"], **payload, "seeds": {}}
    return {**R, stem: entry}


def verdicts_per_seed(judge: Callable[[dict], str], R: dict, stem: str, seeds: dict,
                      recomputed: Callable[[dict], bool] = lambda payload: True) -> dict:
    """``{seed: judge(R with that seed's payload of stem)}`` (seeds in sorted order), over the seeds whose payload
    ``recomputed`` what ``judge`` reads."""
    return {s: judge(results_with_seed(R, stem, payload)) for s, payload in sorted(seeds.items())
            if recomputed(payload)}


def seed_table(per_seed: dict[int, dict[str, float]]):
    """A DataFrame of findings (rows) by seed (columns), with mean / sd / min / max columns appended."""
    import pandas as pd

    df = pd.DataFrame(per_seed)
    df.columns = [f"seed {c}" for c in df.columns]
    vals = df.to_numpy(float)
    df["mean"] = vals.mean(1)
    df["sd"] = vals.std(1, ddof=1) if vals.shape[1] > 1 else 0.0
    df["min"], df["max"] = vals.min(1), vals.max(1)
    return df
