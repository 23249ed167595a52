"""The claims ledger: each claim of the paper, its published numbers, ours, a criterion and a verdict.

Every row is computed from the result files the notebooks write (``results/<notebook>.json``); nothing here is
typed in except the paper's and the replication's numbers (:mod:`uws_core.report.published`). A claim whose
notebook has not run is "not run"; one the run could not test at its scale is "not tested at this scale" (at
paper scale the functional rows read ROUGE-L results: :mod:`uws_core.report.claims_paper`).
``python -m uws_core.report.claims`` writes ``results/CLAIMS.md``; ``make reproduce`` ends with it.

Verdicts are "holds" or "fails" against the criterion written in the row, on every seed the notebook
computed ("seed-dependent" when the seeds disagree: :func:`claim_over_seeds`), at the scale of the run that
produced the numbers (laptop-scale populations are small analogues of the paper's, so a laptop verdict is
evidence about the method, not about Mistral-7B or ViT-B).
"""

from __future__ import annotations

import argparse
import json
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from uws_core.report import claims_paper, published
from uws_core.report.results import results_dir

__all__ = ["Claim", "CLAIMS", "CLAIM_TEXT", "about", "load_all", "ledger", "render_markdown", "write_ledger", "main"]

HOLDS, FAILS, MIXED, NOT_RUN, NOT_TESTED = "holds", "fails", "mixed", "not run", "not tested at this scale"
MARGIN = 0.05  # EVR excess over the null that counts as structure, and accuracy points that count as a gain
#: the fixed text of every ledger row (claim, paper, replication, criterion, source), from claims.toml
CLAIM_TEXT = tomllib.loads((Path(__file__).resolve().parent / "claims.toml").read_text(encoding="utf-8"))


@dataclass
class Claim:
    claim: str
    paper: str
    replication: str
    ours: str
    criterion: str
    verdict: str
    source: str


def load_all(directory: Path | str | None = None) -> dict[str, dict]:
    """Every ``<notebook>.json`` under ``directory`` (default :func:`uws_core.report.results.results_dir`), by stem."""
    d = Path(directory) if directory is not None else results_dir()
    out = {}
    for p in sorted(d.glob("[0-9][0-9]_*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except ValueError as err:
            raise ValueError(f"{p}: not a results file ({err})") from None
    return out


def _res(R: dict, stem: str) -> dict | None:
    return R[stem]["results"] if stem in R else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def about(name: str, **values) -> dict:
    """The fixed text of ledger row ``name`` (``claims.toml``) with its ``{fields}`` filled from ``values`` (and
    ``{margin}`` = :data:`MARGIN`): ``{"claim", "paper", "replication", "criterion", "source"}``."""
    if name not in CLAIM_TEXT:
        raise KeyError(f"claims.toml has no row {name!r}; rows: {sorted(CLAIM_TEXT)}")
    return {field: text.format(margin=MARGIN, **values) for field, text in CLAIM_TEXT[name].items()}


def _row(R: dict, name: str, **values) -> tuple[dict, dict | None]:
    """The fixed text of row ``name`` (:func:`about`) and its notebook's results (None when it has not run)."""
    base = about(name, **values)
    return base, _res(R, base["source"])


def _not_run(base: dict, ran: bool = False) -> Claim:
    """The row when its notebook has not run ("not run"), or ran without what the claim needs ("not tested")."""
    return Claim(ours="-", verdict=NOT_TESTED if ran else NOT_RUN, **base)


# ----------------------------------------------------------------------------------------------- claims
# Each function takes every loaded result file (stem -> payload) and returns one Claim.

def lora_spectra(R: dict) -> Claim:
    pub = published.LORA_SPECTRA["replication"]
    base, r = _row(R, "lora_spectra", top16=_pct(pub["top_evr"][16]), null16=_pct(pub["null_top_evr"][16]))
    if r is None:
        return _not_run(base)
    v = r["verdict_k16"]
    trained, null = r["median_top_evr"]["trained"], r["median_top_evr"]["null_per_model"]
    views = ("B@A (model axis, replication)", "A (rows, authors)")
    ours = "; ".join(f"{view.split(' (')[0]} {view.split('(')[1].split(',')[0]}: {_pct(trained[view]['16'])} vs "
                     f"{_pct(null[view]['16'])}" for view in views)
    ok = all(x["beats per-adapter null in every module"] and x["median excess over per-adapter null"] >= MARGIN
             for x in v.values())
    return Claim(ours=f"N={r['n_adapters']} r={r['rank']}: {ours}", verdict=HOLDS if ok else FAILS, **base)


def _views_verdict(ok: dict[str, bool]) -> str:
    """holds / fails when every view agrees, else mixed (the row's ours says which view holds)."""
    return HOLDS if all(ok.values()) else FAILS if not any(ok.values()) else MIXED


def _full_model_spectra(R: dict, stem: str, what: str, replication: str) -> Claim:
    base, r = _row(R, "full_model_spectra", what=what, replication=replication, source=stem)
    if r is None:
        return _not_run(base)
    rows = r["evr_median"]
    excess = {view: min(x["top16"] - x["null16"] for x in rows if x["view"] == view) for view in ("rows", "model")}
    top = {view: min(x["top16"] for x in rows if x["view"] == view) for view in ("rows", "model")}
    ours = "; ".join(f"{view}: top-16 >= {_pct(top[view])}, excess over null >= {excess[view]:.2f}" for view in excess)
    return Claim(ours=ours, verdict=_views_verdict({v: e >= MARGIN for v, e in excess.items()}), **base)


def vit_spectra(R: dict) -> Claim:
    return _full_model_spectra(R, "02_vit_spectra_and_projection", "ViT fine-tunes", "not tested (random-init only)")


def llama_spectra(R: dict) -> Claim:
    return _full_model_spectra(R, "03_llama8b_spectra", "LLaMA fine-tunes", "not tested")


def random_init(R: dict) -> Claim:
    pub = published.VIT["replication_random_init"]
    base, r = _row(R, "random_init", top16=pub["top16_evr"], mp16=pub["mp_null_top16_evr"])
    if r is None:
        return _not_run(base)
    t = r["random_init"]["table"]
    got, mp = t["random_init"]["rows"], t["mp"]["rows"]
    n = r["params"].get("N_RANDOM_INIT", "?")
    return Claim(ours=f"N={n}: {got:.4f} vs {mp:.4f} (mean over matrices)",
                 verdict=HOLDS if got - mp >= 0.01 else FAILS, **base)


def vit_projection(R: dict) -> Claim:
    pub = published.VIT["paper"]
    base, r = _row(R, "vit_projection", ood_k16=pub["ood_projected_k16"], ood_full=pub["ood_full"])
    if r is None:
        return _not_run(base)
    if not r.get("projection_mean_acc"):
        return Claim(ours="spectra only (no task data at this scale)", verdict=NOT_TESTED, **base)
    acc = {(x["group"], x["how"], x["k"]): x["acc"] for x in r["projection_mean_acc"]}
    parts, ok = [], True
    for group, label in (("fit", "IID"), ("unseen", "unseen")):
        proj, full = acc[(group, "rows", 16)], acc[(group, "own", 0)]
        mean, rnd = acc[(group, "mean", 0)], acc[(group, "random", 16)]
        parts.append(f"{label}: {_pct(proj)} vs {_pct(full)} full (mean model {_pct(mean)}, random basis {_pct(rnd)})")
        ok &= proj >= 0.95 * full and proj - max(mean, rnd) >= MARGIN
    return Claim(ours="; ".join(parts), verdict=HOLDS if ok else FAILS, **base)


_COMPRESSION = {  # population in notebook 06 -> (paper's claim, ratio, paper-shape column, authors' later savings key)
    "lora": ("500 Mistral-7B LoRAs", 19.0, "LoRA factors", None),
    "vit": ("ViT fine-tunes", 100.0, "ViT-B rows", "vit"),
    "llama": ("50 LLaMA-3-8B fine-tunes", 100.0, "Llama-3-8B rows", "llama"),
}


def _compression(R: dict, population: str) -> Claim:
    what, claimed, column, later_key = _COMPRESSION[population]
    later = published.VIT["authors_later_savings_90ev"].get(later_key) if later_key else None
    base, r = _row(R, "compression", what=what, claimed=claimed,
                   excluded=" (first and last layer excluded)" if population != "lora" else "",
                   replication=f"(authors' later code: {_pct(later)} saved at 90% EV)" if later else "not measured")
    if r is None or population not in r["tables"]:
        return _not_run(base, ran=r is not None)
    table = {row["setting"]: dict(row) for row in r["tables"][population]}
    shapes = {row["k"]: row[column] for row in r["paper_shapes"]}
    ev90 = table["90% EV"]
    ours = (f"{ev90['ratio']:.2f}x at 90% EV ({_pct(ev90['savings'])} saved); paper shapes, k=16: "
            f"{shapes[16]:.1f}x")
    paper = R[base["source"]].get("scale") == "paper"
    rouge = paper and population == "lora" and claims_paper.add_rouge_quality(table, r)  # ROUGE-L kept, IID tasks
    if "acc/own" not in ev90:
        return Claim(ours=ours + "; " + (claims_paper.NOT_MEASURED if paper else "quality not measured"),
                     verdict=NOT_TESTED, **base)
    kept = [row for row in table.values() if row.get("acc/own") is not None and row["acc/own"] >= 0.95]
    best = max(kept, key=lambda row: row["ratio"]) if kept else None
    if best is not None:
        ours = f"{best['ratio']:.2f}x keeping 95% {'ROUGE-L' if rouge else 'accuracy'} ({best['setting']}); " + ours
    ok = best is not None and best["ratio"] >= claimed
    return Claim(ours=ours, verdict=HOLDS if ok else FAILS, **base)


def lora_compression(R: dict) -> Claim:
    return _compression(R, "lora")


def vit_compression(R: dict) -> Claim:
    return _compression(R, "vit")


def llama_compression(R: dict) -> Claim:
    return _compression(R, "llama")


def lora_shared_init(R: dict) -> Claim:
    pub = published.LORA_SPECTRA["shared_init"]
    base, r = _row(R, "lora_shared_init", n_shared=pub["n_shared"], n_total=pub["n_total"],
                   shared=pub["top16_evr_A_shared"], rest=pub["top16_evr_A_rest"])
    if r is None or r.get("lora_shared_init") is None:
        return _not_run(base, ran=r is not None)
    m = r["lora_shared_init"]["median"]
    ok = m["shared"] - m["rest_mean"] >= MARGIN
    return Claim(ours=f"{m['shared']:.3f} vs {m['rest_mean']:.3f} +- {m['rest_std']:.3f} (n={r['lora_shared_init']['n']} each)",
                 verdict=HOLDS if ok else FAILS, **base)


def _laptop_result(R: dict, base: dict, needed: str, without: str, paper: Callable[[dict], dict]
                   ) -> tuple[dict | None, Claim | None]:
    """``(results, None)`` when ``base["source"]`` ran at laptop scale and wrote ``needed``, else ``(None, claim)``: not
    run, the paper-scale claim ``paper(results)``, or not tested (``without`` says what the results hold)."""
    r = _res(R, base["source"])
    if r is None:
        return None, _not_run(base)
    if R[base["source"]].get("scale") == "paper":
        return None, Claim(**paper(r), **base)
    if not r.get(needed):
        return None, Claim(ours=without, verdict=NOT_TESTED, **base)
    return r, None


def lora_loo(R: dict) -> Claim:
    pub = published.LORA_LOO["replication"]
    base = about("lora_loo", base=pub["base"], own=pub["own"], mean_only=pub["mean_only"], k16=pub["mean_plus_k16"])
    r, early = _laptop_result(R, base, "accuracy_mean_pct", "weight-space errors only", claims_paper.loo_paper)
    if early is not None:  # not run, ROUGE-L on the IID and OOD tasks at paper scale, or weight space only
        return early
    b, acc, v = r["baselines_pct"], r["accuracy_mean_pct"], r["verdict"]
    d16 = next(d for d in r["paired_differences_pct"] if d["comparison"].startswith("B@A: mean + proj - mean")
               and d["k"] == 16)
    kept = {"B@A": v["share of own gain kept, B@A mean+proj k=16"], "factors": v["share of own gain kept, factors k=16"]}
    ours = (f"N={r['n_tasks']}: base {b['base']:.1f}%, own {b['own']:.1f}%, mean of others {b['mean_of_others']:.1f}%, "
            f"B@A mean + k16 {acc['B@A (replication), mean + proj']['16']:.1f}% (+{d16['diff']:.1f} [{d16['lo']:.1f}, "
            f"{d16['hi']:.1f}] over the mean), factors k16 {acc['factors (authors), mean + proj']['16']:.1f}%; "
            f"gain kept {kept['B@A']:.0%} / {kept['factors']:.0%}")
    return Claim(ours=ours, verdict=HOLDS if max(kept.values()) >= 0.5 else FAILS, **base)


def merging(R: dict) -> Claim:
    pub, rep = published.MERGING["paper"], published.MERGING["replication"]
    base = about("merging", subspace=pub["subspace"], knots_ties=pub["knots_ties"], individual=pub["individual"],
                 rep_mean=rep["mean"], rep_subspace=rep["subspace"], rep_ties=rep["ties_d0.2"],
                 rep_ta=rep["task_arithmetic"], rep_individual=rep["individual"])
    r, early = _laptop_result(R, base, "summary_n8", "weight-space merges only", claims_paper.merging_paper)
    if early is not None:  # not run, ROUGE-L of the merges on the merged tasks at paper scale, or weights only
        return early
    parts, ok = [], True
    for pop, t in r["summary_n8"].items():
        rivals = {m: t[m] for m in ("mean", "task arithmetic", "TIES", "DARE", "KnOTS-TIES") if m in t}
        best = max(rivals, key=rivals.get)
        parts.append(f"{pop}: subspace {t['subspace k=16']:.1f}, best other {best} {rivals[best]:.1f}, "
                     f"individual {t['individual']:.1f}")
        ok &= t["subspace k=16"] >= rivals[best] + 2
    ours = "; ".join(parts) + f"; largest abs(subspace - mean) {r['max_subspace_minus_mean']:.0e}"
    return Claim(ours=ours, verdict=HOLDS if ok else FAILS, **base)


def adaptation(R: dict) -> Claim:
    rep = published.ADAPTATION["replication_k16"]
    base, r = _row(R, "adaptation", lora_r16=rep["lora_r16"], subspace_plus_mean=rep["subspace_plus_mean"],
                   basis_only=rep["basis_only"], base=rep["base"])
    if r is None:
        return _not_run(base)
    if R[base["source"]].get("scale") == "paper":  # ROUGE-L of coefficients trained on Mistral-7B's OOD tasks
        return Claim(**claims_paper.adaptation_paper(r), **base)
    if not r.get("vit_summary"):
        ours = claims_paper.scale_note(R[base["source"]], "bases and trainable counts only")
        return Claim(ours=ours, verdict=NOT_TESTED, **base)
    acc = {(x["label"], int(x["k"])): 100 * x["test"] for x in r["vit_summary"]}
    top = max(acc[("top-k basis", 16)], acc[("top-k basis + mean", 16)])
    rnd, lora = acc[("random k-dim basis", 16)], acc[("LoRA rank k", 16)]
    ours = (f"ViT k=16: subspace {top:.1f}, random basis {rnd:.1f}, LoRA {lora:.1f}, "
            f"head only {acc.get(('head only (linear probe)', 0), float('nan')):.1f}")
    lm = next((x for x in r.get("lm_table", []) if x["k"] == "16"), None)
    if lm:
        ours += f"; tiny Mistral k=16: LoRA {lm['LoRA (fresh)']:.1f}, subspace + mean {lm['subspace + mean']:.1f}"
    ok = top >= rnd + 2 and top >= lora - 2
    return Claim(ours=ours, verdict=HOLDS if ok else FAILS, **base)


CLAIMS: list[Callable[[dict], Claim]] = [lora_spectra, vit_spectra, llama_spectra, random_init, vit_projection, lora_compression,
                                         vit_compression, llama_compression, lora_loo, merging, adaptation,
                                         lora_shared_init]


def _has(*keys: str) -> Callable[[dict], bool]:
    return lambda payload: all(k in payload for k in keys)


def _has_table(population: str) -> Callable[[dict], bool]:
    return lambda payload: population in (payload.get("tables") or {})


#: per claim, whether a seed's payload recomputed what the claim reads (a seed that did not, e.g. the random-init
#: study that exists for ViT seed 0 only, is not judged for that claim)
SEED_FIELDS: dict[Callable, Callable[[dict], bool]] = {
    lora_spectra: _has("verdict_k16", "median_top_evr"), vit_spectra: _has("evr_median"),
    llama_spectra: _has("evr_median"), random_init: _has("random_init"), vit_projection: _has("projection_mean_acc"),
    lora_compression: _has_table("lora"), vit_compression: _has_table("vit"), llama_compression: _has_table("llama"),
    lora_loo: _has("baselines_pct", "accuracy_mean_pct", "paired_differences_pct", "verdict"),
    merging: _has("summary_n8"), adaptation: _has("vit_summary"), lora_shared_init: _has("lora_shared_init"),
}


def claim_over_seeds(fn: Callable[[dict], Claim], R: dict) -> Claim:
    """``fn``'s claim, its criterion evaluated on every seed of its notebook's ``results["seeds"]``
    (:mod:`uws_core.report.seeds`): the verdict is the common one, or "seed-dependent" when the seeds disagree;
    ``ours`` keeps seed 0's numbers and says how many seeds agree. Claims without seeds are unchanged."""
    from uws_core.report.seeds import verdict_over_seeds, verdicts_per_seed

    claim = fn(R)
    r = _res(R, claim.source)
    seeds = (r or {}).get("seeds") or {}
    if not isinstance(seeds, dict):
        raise ValueError(f"results of {claim.source}: key 'seeds' must map each population seed to its payload, "
                         f"got {type(seeds).__name__}")
    if not seeds or claim.verdict in (NOT_RUN, NOT_TESTED):
        return claim
    per_seed = verdicts_per_seed(lambda r_seed: fn(r_seed).verdict, R, claim.source, seeds,
                                 SEED_FIELDS.get(fn, lambda payload: True))
    if len(per_seed) < 2:                     # one seed (or none) recomputed what this claim reads
        return claim
    claim.verdict = verdict_over_seeds(per_seed)
    claim.ours += " / per seed: " + ", ".join(f"{s} {v}" for s, v in per_seed.items())
    return claim


def ledger(R: dict) -> list[Claim]:
    """One :class:`Claim` per entry of :data:`CLAIMS`, from loaded result files (see :func:`load_all`), each
    judged on every seed its notebook computed (:func:`claim_over_seeds`)."""
    return [claim_over_seeds(f, R) for f in CLAIMS]


def render_markdown(rows: list[Claim], R: dict) -> str:
    scales = sorted({p.get("scale", "?") for p in R.values()}) or ["-"]
    head = [f"# Claims ledger ({', '.join(scales)} scale)", "",
            f"Written by `python -m uws_core.report.claims` from {len(R)} result files ("
            + ", ".join(sorted(R)) + "). Paper: " + published.PAPER + "; replication: " + published.REPLICATION + ".",
            "", "Laptop populations are built from several seeds (`uws_core.zoo.populations.SEEDS`): `ours` gives seed 0's "
            "numbers and, where the notebook recomputed the claim on other seeds, the verdict per seed; a verdict "
            "holds or fails only if every seed agrees, otherwise it reads \"seed-dependent\".",
            "", "| claim | paper | replication | ours | criterion | verdict | notebook |",
            "|---|---|---|---|---|---|---|"]
    cell = lambda s: str(s).replace("|", "/").replace("\n", " ")
    body = ["| " + " | ".join(cell(getattr(c, f.name)) for f in fields(Claim)) + " |" for c in rows]
    return "\n".join(head + body) + "\n"


def write_ledger(directory: Path | str | None = None) -> Path:
    """Write ``CLAIMS.md`` beside the result files and return its path."""
    d = Path(directory) if directory is not None else results_dir()
    R = load_all(d)
    path = d / "CLAIMS.md"
    path.write_text(render_markdown(ledger(R), R))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uws_core.report.claims", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=None, help="results directory (default: results/ or UWS_RESULTS)")
    args = parser.parse_args(argv)
    path = write_ledger(args.results)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
