"""The functional rows of the claims ledger at paper scale: ROUGE-L of the Mistral-7B adapters on their tasks.

Notebooks 04, 06 and 08 run at ``UWS_SCALE=paper`` write ``results["functional_paper"]`` when they were given the
base model and the task data (:mod:`uws_core.experiments.task_study`): ROUGE-L (first reference, the authors'
score) per run with two-stage bootstrap CIs over tasks and examples, and paired differences. The functions here
read those numbers for :mod:`uws_core.report.claims`; :func:`loo_paper` and :func:`merging_paper` return the row's
``ours`` and ``verdict``: "holds" / "fails" against the row's criterion, or "not tested at this scale" when the
paper-scale run measured nothing functional (``ours`` then says "not measured at paper scale" and why). The
criteria are the laptop rows', with ROUGE-L in place of accuracy.
"""

from __future__ import annotations

import math

__all__ = ["NOT_MEASURED", "loo_paper", "merging_paper", "adaptation_paper", "compression_quality_paper",
           "add_rouge_quality", "scale_note"]

NOT_MEASURED = "not measured at paper scale"
RIVALS = ("mean", "task arithmetic", "TIES", "DARE", "KnOTS-TIES")  # notebook 04's other merges


def _ci(row: dict, metric: str = "rougeL") -> str:
    return f"{row[metric]:.1f} [{row[metric + '_lo']:.1f}, {row[metric + '_hi']:.1f}]"


def _how(f: dict) -> str:
    s = f.get("setup", {})
    return f"{f.get('precision', '?')} on {f.get('device', '?')}, {s.get('decoding', '?')} decoding" + (
        f", first {s['limit']} test examples per task" if s.get("limit") else ", full test splits")


def _share(v) -> str:
    return "n/a (own <= base)" if v is None or math.isnan(v) else f"{v:.0%}"


def _row(ours: str, ok: bool | None) -> dict[str, str]:
    return {"ours": ours, "verdict": "not tested at this scale" if ok is None else "holds" if ok else "fails"}


def _why_not(r: dict) -> str:
    return f"{NOT_MEASURED}: " + (r.get("functional") or "no ROUGE-L results in the paper-scale run")


def loo_paper(r: dict, k: int = 16, share: float = 0.5) -> dict[str, str]:
    """Notebook 08: per group (IID, OOD) the baselines and both recipes at k, and the share of the own adapter's
    ROUGE-L gain over the base kept; holds when either recipe keeps >= ``share`` in every group with tasks."""
    f = r.get("functional_paper")
    if not f:
        return _row(_why_not(r), None)
    k = k if k in f["ks"] else f["ks"][0]
    parts, oks = [], []
    for group, g in f["groups"].items():
        if not g.get("table"):
            parts.append(f"{group.upper()}: no task with both adapter and test data")
            continue
        t = {row["run"]: row for row in g["table"]}
        kept = {"B@A": g["gain_kept"][f"product_mean_k{k} k={k}"], "factors": g["gain_kept"][f"factors_nomean_k{k} k={k}"]}
        parts.append(f"{group.upper()} ({len(g['tasks'])} tasks) ROUGE-L: base {_ci(t['base'])}, own {_ci(t['own'])}, "
                     f"mean of others {_ci(t['mean_of_others'])}, B@A mean + k{k} {_ci(t[f'product_mean_k{k}'])}, "
                     f"factors k{k} {_ci(t[f'factors_nomean_k{k}'])}, random basis k{k} "
                     f"{_ci(t[f'factors_random_nomean_k{k}'])}; gain kept {_share(kept['B@A'])} / {_share(kept['factors'])}")
        oks.append(any(v is not None and not math.isnan(v) and v >= share for v in kept.values()))
    return _row("paper scale, " + _how(f) + ": " + "; ".join(parts), all(oks) if oks else None)


def merging_paper(r: dict, margin: float = 2.0, subspace: str = "subspace k=16") -> dict[str, str]:
    """Notebook 04: the subspace merge against the best other merge (ROUGE-L points, with the paired CI);
    holds when it is >= ``margin`` points above it."""
    f = r.get("functional_paper")
    if not f or not f.get("table"):
        return _row(_why_not(r) if not f else f"{NOT_MEASURED}: none of the merged tasks has its test data", None)
    t = {row["method"]: row for row in f["table"]}
    rivals = {m: t[m]["rougeL"] for m in RIVALS if m in t and m != subspace}
    best = max(rivals, key=rivals.get)
    d = next(p for p in f["paired"] if p["comparison"] == f"{subspace} - {best}")
    ours = (f"paper scale, {_how(f)}, {len(f['tasks'])} tasks, ROUGE-L: subspace {_ci(t[subspace])}, best other {best} "
            f"{_ci(t[best])}, individual {_ci(t['individual'])}, base {_ci(t['base'])}; subspace - {best} "
            f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]")
    return _row(ours, t[subspace]["rougeL"] >= rivals[best] + margin)


def adaptation_paper(r: dict, margin: float = 2.0) -> dict[str, str]:
    """Notebook 05: coefficients trained on the OOD tasks' train splits (:mod:`uws_core.experiments.lora_coefficients`);
    holds when the better subspace variant (with / without the mean) is >= ``margin`` ROUGE-L points above the random
    basis of the same setting and within ``margin`` of the task's own LoRA (the laptop row's criterion, with the
    authors' rank-16 adapter as the LoRA)."""
    f = r.get("functional_paper")
    k = (f or {}).get("settings", {}).get("k")
    if not f or not any(row["run"].startswith("subspace_") for row in f.get("table", [])):
        why = r.get("functional") or ("none of the tasks has its test data" if f else "not run")
        return _row(f"{NOT_MEASURED} (ViT: bases and trainable counts only; Mistral-7B coefficients: {why})", None)
    t = {row["run"]: row for row in f["table"]}
    sub = {m: t[f"subspace_{m}_k{k}"] for m in ("mean", "nomean") if f"subspace_{m}_k{k}" in t}
    best = max(sub, key=lambda m: sub[m]["rougeL"])
    rnd = t.get(f"random_{best}_k{k}")
    parts = [f"subspace{' + mean' if best == 'mean' else ''} k{k} {_ci(sub[best])}"]
    others = (("random basis", f"random_{best}_k{k}"), ("mean only", "mean_only"), ("own LoRA", "own"),
              ("base", "base"))
    parts += [f"{name} {_ci(t[run])}" for name, run in others if run in t]
    ok = (rnd is not None and "own" in t and sub[best]["rougeL"] >= rnd["rougeL"] + margin
          and sub[best]["rougeL"] >= t["own"]["rougeL"] - margin)
    trainable = max((x["trainable"] for x in f.get("training", [])), default=0)
    ours = (f"paper scale, {_how(f)}, Mistral-7B, {len(f['tasks'])} OOD tasks, {trainable} coefficients trained "
            f"({f['settings']['steps']} steps of {f['settings']['batch_size']}), ROUGE-L: " + ", ".join(parts))
    return _row(ours, ok if rnd is not None and "own" in t else None)


def compression_quality_paper(r: dict) -> dict[str, float] | None:
    """Notebook 06: ROUGE-L kept (rebuilt / own, mean over the IID tasks) per setting of the LoRA table, or None."""
    f = r.get("functional_paper")
    if not f or not f.get("table"):
        return None
    return {row["setting"]: row["rougeL/own"] for row in f["table"] if row["setting"] not in ("base", "own")
            and row["rougeL/own"] is not None}


def add_rouge_quality(table: dict[str, dict], r: dict) -> dict[str, float] | None:
    """Notebook 06's LoRA byte table (setting -> row) with ``acc/own`` set to the ROUGE-L kept where measured;
    returns the ROUGE-L kept per setting, or None (the table unchanged)."""
    rouge = compression_quality_paper(r)
    for setting, kept in (rouge or {}).items():
        if setting in table:
            table[setting]["acc/own"] = kept
    return rouge


def scale_note(payload: dict, what: str) -> str:
    """``what`` a run measured, prefixed "not measured at paper scale" when the payload was written at paper scale."""
    return f"{NOT_MEASURED} ({what})" if payload.get("scale") == "paper" else what
