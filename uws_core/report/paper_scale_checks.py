"""Checks a reviewer runs first at paper scale: do we reproduce the replication's published numbers?

:func:`compare_with_phase1_report` computes, for every module of the real Lots-of-LoRAs Mistral-7B adapters,
the top-k EVR of the replication recipe (:func:`uws_core.linalg.recipes.replication`: dW = B @ A unscaled, flattened,
centred, model axis; the spectrum notebook 01 shows as "B@A model axis", which scales by alpha/r: the same for
these adapters, all alpha 32 / r 16) and sets it beside ``phase1_report.json`` of
cahlen/universal-subspace-stress-test (``data_manifests/published``), module by module. Their run was float32
on a GPU; ours is float64, so top-k EVR must agree to ``tol = 1e-3``. Their population is the first 100
repository ids in sorted order (``download.py`` L21-25: ``sorted(repos)[:N]`` of the hub listing; see
:func:`replication_adapter_ids`), module names as in ``analyze.py`` L46 (the PEFT key without
``base_model.model.``). Those 100 are not all in ``data_manifests/mistral7b_loras.csv`` (the authors' list lacks
task020, task025, task036 and task046, which the replication's result files name): take the ids from the hub
listing (docs/paper_scale.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from uws_core.report import published

from uws_core.linalg import recipes

__all__ = ["PHASE1_KS", "replication_adapter_ids", "replication_module_name", "compare_with_phase1_report",
           "phase1_verdict"]

PHASE1_KS = (1, 4, 16, 32, 64)
FAMILY = "Mistral-7B-Instruct-v0.2-4b-r16"


def replication_adapter_ids(repo_ids: Iterable[str], n: int = 100) -> list[str]:
    """The replication's population: repository ids naming the Lots-of-LoRAs Mistral family, sorted, first n."""
    ids = sorted(r for r in repo_ids if FAMILY in r)
    if len(ids) < n:
        raise ValueError(f"only {len(ids)} {FAMILY} repository ids given; the replication used the first {n}")
    return ids[:n]


def replication_module_name(key: str) -> str:
    """PEFT module key -> the replication's module name (``base_model.model.`` removed, analyze.py L46)."""
    prefix = "base_model.model."
    return key[len(prefix):] if key.startswith(prefix) else key


def compare_with_phase1_report(aset, report: Mapping[str, dict] | None = None, ks: Sequence[int] = PHASE1_KS,
                               tol: float = 1e-3, scaling: str = "none", device=None) -> pd.DataFrame:
    """Per module and k: our replication-recipe top-k EVR, the report's, their difference and whether it is
    within ``tol``. ``aset``: an :class:`uws_core.weights.adapters.AdapterSet` of the same adapters; ``report``:
    module name -> the report's per-module dict (default: the published ``phase1_report.json``).

    Columns: module, k, ours, published, abs_diff, ok. Refuses (naming the module) a population whose module
    set or adapter count differs from the report's."""
    report = published.replication_phase1_modules() if report is None else report
    names = {replication_module_name(k): k for k in aset.module_keys}
    missing, extra = sorted(set(report) - set(names)), sorted(set(names) - set(report))
    if missing or extra:
        raise KeyError(f"modules differ from the report: {len(missing)} only in the report (e.g. "
                       f"{(missing or ['-'])[0]!r}), {len(extra)} only in the adapters (e.g. {(extra or ['-'])[0]!r})")
    rows = []
    for name in sorted(report):
        row = report[name]
        if int(row["N"]) != len(aset):
            raise ValueError(f"module {name!r}: the report has N = {row['N']} adapters, the population {len(aset)}")
        b, a = aset.factors(names[name])  # (N, d_out, r), (N, r, d_in) as stored
        spec = recipes.replication(b, a, scaling=recipes.product_scaling(scaling, aset.scalings), device=device,
                                   key=names[name])
        for k in ks:
            theirs = row.get(f"top{k}_vit")
            if theirs is None:  # the report leaves top-64 out when N < 64
                continue
            ours = spec.top_evr(k)
            rows.append(dict(module=name, k=int(k), ours=ours, published=float(theirs),
                             abs_diff=abs(ours - float(theirs)), ok=bool(abs(ours - float(theirs)) <= tol)))
    return pd.DataFrame(rows)


def phase1_verdict(table: pd.DataFrame, tol: float = 1e-3) -> dict:
    """Summary of :func:`compare_with_phase1_report`: modules, comparisons, largest difference, how many fail."""
    worst = table.loc[table.abs_diff.idxmax()]
    return {"modules": int(table.module.nunique()), "comparisons": int(len(table)), "tol": tol,
            "max_abs_diff": float(table.abs_diff.max()), "worst": f"{worst.module} k={worst.k}",
            "n_failing": int((~table.ok).sum()), "reproduced": bool(table.ok.all()),
            "median_top16_ours": float(np.median(table[table.k == 16].ours)) if (table.k == 16).any() else None}
