"""Scores of generated answers (ROUGE-L, exact match) and bootstrap confidence intervals over examples and tasks.

* :func:`rouge_l`: ROUGE-L F-measure of the ``rouge-score`` package with the Porter stemmer, prediction against one
  reference, as the authors score (toshi2k2/unisub ``NLG/rouge_scorer.py`` L83-96: ``RougeScorer(["rougeL"],
  use_stemmer=True)``, ``.fmeasure``). The authors score the *first* reference only (``NLG/mistral_eval.py`` L347
  keeps ``gt[0][0]``); :func:`score_prediction` gives that (``rougeL``) and the maximum over all references
  (``rougeL_max``, the Super-NaturalInstructions convention). An empty prediction scores 0 (rouge-score's own rule:
  no tokens, F = 0). rouge-score's default tokenizer keeps only ``[a-z0-9]`` runs, as in the authors' scoring: an
  answer written only in another script (Chinese, Arabic, ...) has no tokens and scores 0 even when it is right;
  exact match still counts it.
* :func:`exact_match`: the prediction equals a reference after the authors' ``normalize_answer`` (lower case, no
  punctuation, single spaces; ``NLG/rouge_scorer.py`` L36-57); an empty prediction scores 0 whatever the references.
* :func:`bootstrap_mean_ci` (examples of one task, percentile bootstrap) and :func:`bootstrap_task_mean_ci` (the
  mean over tasks of per-task means; two stages: tasks drawn with replacement, then examples within each task), and
  :func:`summarize` (per task and overall, in percent); :func:`paired_difference_ci`: run a minus run b on the same
  examples (the two-stage bootstrap of the per-example differences), e.g. mean + projection minus mean alone.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
import pandas as pd

__all__ = ["rouge_l", "normalize_answer", "exact_match", "score_prediction", "bootstrap_mean_ci",
           "bootstrap_task_mean_ci", "paired_difference_ci", "summarize", "METRICS"]

METRICS = ("rougeL", "rougeL_max", "exact_match")


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1] (rouge-score, Porter stemmer)."""
    if not prediction.strip():
        return 0.0
    return float(_scorer().score(target=reference, prediction=prediction)["rougeL"].fmeasure)


def normalize_answer(s: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed (the authors' ``normalize_answer``)."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(s.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalized prediction is non-empty and equals a normalized reference, else 0.0."""
    p = normalize_answer(prediction)
    return float(bool(p) and any(p == normalize_answer(r) for r in references))


def score_prediction(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """``{"rougeL": vs the first reference (authors), "rougeL_max": best reference, "exact_match": 0/1}``."""
    if not references:
        raise ValueError("no reference answers to score against")
    scores = [rouge_l(prediction, r) for r in references]
    return {"rougeL": scores[0], "rougeL_max": max(scores), "exact_match": exact_match(prediction, references)}


def bootstrap_mean_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean over examples (resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"need a non-empty 1-D array of per-example scores, got shape {v.shape}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)  # (n_boot,)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def bootstrap_task_mean_ci(per_task: Mapping[str, Sequence[float]], n_boot: int = 2000, level: float = 0.95,
                           seed: int = 0) -> tuple[float, float, float]:
    """(mean of task means, low, high): two-stage bootstrap, tasks resampled, then examples within each task."""
    tasks = [np.asarray(v, dtype=np.float64) for v in per_task.values()]
    if not tasks or any(t.size == 0 for t in tasks):
        raise ValueError("need at least one task, each with at least one scored example")
    rng = np.random.default_rng(seed)
    inner = np.stack([t[rng.integers(0, t.size, size=(n_boot, t.size))].mean(axis=1) for t in tasks])  # (T, n_boot)
    pick = rng.integers(0, len(tasks), size=(n_boot, len(tasks)))  # (n_boot, T)
    stat = inner[pick, np.arange(n_boot)[:, None]].mean(axis=1)
    a = (1 - level) / 2
    return (float(np.mean([t.mean() for t in tasks])), float(np.quantile(stat, a)), float(np.quantile(stat, 1 - a)))


def paired_difference_ci(a: pd.DataFrame, b: pd.DataFrame, metric: str = "rougeL", n_boot: int = 2000,
                         level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean over tasks of a - b, low, high) in percent, examples paired by (task, id); both runs must hold the
    same examples (a KeyError names the first one missing from either)."""
    ka, kb = a.set_index(["task", "id"])[metric], b.set_index(["task", "id"])[metric]
    only = ka.index.symmetric_difference(kb.index)
    if len(only):
        raise KeyError(f"example {only[0]} is scored in one run only: pair runs over the same examples")
    d = (ka - kb.reindex(ka.index)).groupby(level="task", sort=False)
    return tuple(100 * x for x in bootstrap_task_mean_ci({t: g.to_numpy() for t, g in d}, n_boot, level, seed))


def summarize(records: pd.DataFrame, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per task and overall (``task == "ALL"``, mean of task means), every metric in percent with its CI.

    ``records``: one row per example with columns ``task`` and the :data:`METRICS`. Columns of the result:
    task, n, then ``<metric>``, ``<metric>_lo``, ``<metric>_hi`` per metric."""
    missing = [c for c in ("task", *METRICS) if c not in records.columns]
    if missing:
        raise KeyError(f"records lack column(s) {missing}")
    rows = []
    groups = {t: g for t, g in records.groupby("task", sort=False)}
    for t, g in groups.items():
        row = {"task": t, "n": len(g)}
        for m in METRICS:
            row[m], row[m + "_lo"], row[m + "_hi"] = (100 * x for x in bootstrap_mean_ci(g[m], n_boot, level, seed))
        rows.append(row)
    if groups:
        row = {"task": "ALL", "n": len(records)}
        for m in METRICS:
            ci = bootstrap_task_mean_ci({t: g[m] for t, g in groups.items()}, n_boot, level, seed)
            row[m], row[m + "_lo"], row[m + "_hi"] = (100 * x for x in ci)
        rows.append(row)
    return pd.DataFrame(rows)
