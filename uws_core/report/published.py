"""Numbers published by the paper, the independent replication and the authors' later analysis.

The replication's numbers are computed here from its own result files, copied unchanged into
``data_manifests/published/replication/`` (cahlen/universal-subspace-stress-test @ dd57f0c, MIT); the
authors' family summary from ``data_manifests/published/authors_family_summary.csv`` (toshi2k2/unisub
``Main_weight_analysis/family_summary.csv`` @ 2244a9a, numbers only). Every file's sha256 is checked against
``data_manifests/published/SHA256SUMS`` when it is read; a mismatch is refused naming the file. Only the
paper's numbers are typed in (they exist only as text). The summaries round as the replication's README does
(EVR to 4 decimals, accuracies in percent to 1); the per-module and per-task data are the files' own values.

The notebooks print these beside ours and never compute with them except to compare. Fractions are in [0, 1];
accuracies in percent.
"""

from __future__ import annotations

import csv
import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

PAPER = "Kaushik et al., arXiv 2512.05117"
REPLICATION = "cahlen/universal-subspace-stress-test @ dd57f0c"
AUTHORS_LATER = "toshi2k2/unisub Main_weight_analysis/family_summary.csv @ 2244a9a"
PUBLISHED_DIR = Path(__file__).resolve().parents[2] / "data_manifests" / "published"
REPLICATION_DIR = PUBLISHED_DIR / "replication"

__all__ = ["PAPER", "REPLICATION", "AUTHORS_LATER", "PUBLISHED_DIR", "PublishedDataError", "read_published",
           "replication_phase1_modules", "replication_mean_vs_basis", "replication_loo_weight_errors",
           "authors_family_summary", "LORA_SPECTRA", "LORA_LOO", "VIT", "MERGING", "ADAPTATION"]


class PublishedDataError(ValueError):
    """A published data file that is missing or differs from its recorded sha256."""


@lru_cache(maxsize=None)
def _checksums() -> dict[str, str]:
    path = PUBLISHED_DIR / "SHA256SUMS"
    if not path.is_file():
        raise PublishedDataError(f"{path} is missing")
    out = {}
    for line in path.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        out[name.removeprefix("./")] = digest
    return out


def read_published(relpath: str) -> bytes:
    """The bytes of ``data_manifests/published/<relpath>`` after checking its sha256 against SHA256SUMS."""
    want = _checksums().get(relpath)
    path = PUBLISHED_DIR / relpath
    if want is None:
        raise PublishedDataError(f"{relpath} has no entry in {PUBLISHED_DIR / 'SHA256SUMS'}")
    if not path.is_file():
        raise PublishedDataError(f"{path} is missing")
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise PublishedDataError(f"{path} has sha256 {got}, SHA256SUMS says {want}: the published file changed")
    return data


@lru_cache(maxsize=None)
def _replication_json(relpath: str):
    return json.loads(read_published("replication/" + relpath))


def _pct(x: float) -> float:
    return round(100.0 * float(x), 1)


def replication_phase1_modules() -> dict[str, dict]:
    """phase1_report.json per module (96 q/k/v modules of 100 Mistral-7B LoRAs): the file's own dicts
    (``top{1,4,16,32,64}_vit`` / ``_null``, ``recon_err`` by k, ``mean_energy_fraction``, shapes)."""
    return _replication_json("phase1_lora_spectral/results/phase1_report.json")["layers"]


def replication_mean_vs_basis(n: int = 100) -> list[dict]:
    """mean_vs_basis results per held-out task, N = 100 (``mean_vs_basis_n100.json``) or 500 (``mean_vs_basis.json``,
    N = 500 per the replication's README table)."""
    name = {100: "mean_vs_basis_n100.json", 500: "mean_vs_basis.json"}.get(n)
    if name is None:
        raise ValueError(f"the replication published mean_vs_basis for N = 100 and 500, not {n}")
    return _replication_json("phase1_lora_spectral/results/" + name)


def replication_loo_weight_errors() -> dict[str, dict[int, float]]:
    """task_acc_summary.json: per held-out task (N_fit = 99), the leave-one-out relative weight error of
    mean + top-k over all modules, ``sqrt(sum ||dW - recon||^2 / sum ||dW||^2)`` (task_accuracy_test.py)."""
    return {t["task_id"]: {int(k): float(v) for k, v in t["weight_rel_err"].items()}
            for t in _replication_json("phase1_lora_spectral/results/task_acc_summary.json")}


def authors_family_summary() -> dict[str, dict]:
    """The authors' later family summary: per family, models, layers and % saved at 80/90/95% EV."""
    rows = csv.DictReader(read_published("authors_family_summary.csv").decode().splitlines())
    return {r["family"]: {k: float(v) for k, v in r.items() if k != "family"} for r in rows}


def _lora_spectra() -> dict:
    mods = replication_phase1_modules().values()
    med = lambda key: float(np.median([m[key] for m in mods]))  # noqa: E731
    return {
        "paper": {"claim": "about 16 directions per layer hold most of the variance; 19x memory",
                  "unfolding": "A (rows) and B (cols) separately, centred by the mean column; randomized SVD",
                  "source": PAPER},
        # medians over the 96 modules; B@A unscaled, flattened, centred, model-axis PCA (the replication recipe)
        "replication": {
            "unfolding": "B@A flattened (model axis), centred", "n_adapters": 100,
            "top_evr": {k: round(med(f"top{k}_vit"), 4) for k in (1, 4, 16, 32, 64)},
            "null_top_evr": {k: round(med(f"top{k}_null"), 4) for k in (1, 4, 16, 32, 64)},
            "recon_error_k16": round(float(np.median([m["recon_err"]["16"] for m in mods])), 4),
            "source": REPLICATION + " experiments/phase1_lora_spectral/results/phase1_report.json"},
        # a separate study of the 500 public adapters (no result file): 197 share one identical random init of A
        "shared_init": {"n_shared": 197, "n_total": 500, "top16_evr_A_shared": (0.86, 0.90),
                        "top16_evr_A_rest": (0.02, 0.05),
                        "source": "digest section 4 (study of the public Lots-of-LoRAs adapters)"},
    }


def _loo_means(n: int) -> dict:
    res = replication_mean_vs_basis(n)
    cond = lambda c: _pct(np.mean([t["conditions"][c] for t in res]))  # noqa: E731
    return {"base": _pct(np.mean([t["base"] for t in res])), "own": _pct(np.mean([t["orig"] for t in res])),
            "mean_only": cond("mean_only"), "basis_k16": cond("basis_k16"), "full_k16": cond("full_k16"),
            "n_tasks": len(res)}


def _lora_loo() -> dict:
    by_n = {n: _loo_means(n) for n in (100, 500)}
    span = lambda key: tuple(sorted(by_n[n][key] for n in by_n))  # noqa: E731
    return {"replication": {
        "base": by_n[100]["base"], "own": by_n[100]["own"], "mean_only": span("mean_only"),
        "mean_plus_k16": span("full_k16"), "basis_only": span("basis_k16"), "by_n": by_n,
        "what": "leave-one-out: basis = V V^T (dW - mean), full = mean + basis; 10 tasks x 20 train-split examples",
        "source": REPLICATION + " experiments/phase1_lora_spectral/results/mean_vs_basis{,_n100}.json"}}


def _vit() -> dict:
    layer = _replication_json("phase2_random_init/results/phase2_report.json")
    q = layer["layers"]["block05_q_proj"]  # the row of the replication's README table
    fam = authors_family_summary()
    return {
        "paper": {"ood_projected_k16": 87.8, "ood_full": 91.3, "compression": "100x (first and last layer excluded)",
                  "source": PAPER},
        "authors_later_savings_90ev": {key: round(fam[name]["savings_90_pct"] / 100.0, 3) for key, name in
                                       (("vit", "ViT"), ("gpt2", "GPT-2"), ("llama", "LLaMA"), ("flan_t5", "Flan-T5 GLUE"))}
        | {"source": AUTHORS_LATER},
        "replication_random_init": {"top16_evr": round(q["vit_top16_evr"], 4),
                                    "mp_null_top16_evr": round(q["null_top16_evr"], 4),
                                    "n_models": int(layer["n_models"]),
                                    "source": REPLICATION + " phase2_random_init/results/phase2_report.json (block05 q)"},
    }


def _merging() -> dict:
    m = _replication_json("phase3_merging/results/phase3_merge_results.json")["methods"]
    sweep = _replication_json("phase3_merging/results/phase3_ties_sweep.json")["ties_by_density"]
    avg = lambda d: _pct(np.mean(list(d.values())))  # noqa: E731
    return {
        "paper": {"subspace": 83.5, "knots_ties": 68.0, "individual": 84.1, "source": PAPER},
        "replication": {"mean": avg(m["mean"]), "subspace": avg(m["subspace_k16"]), "ties_d0.2": avg(sweep["0.2"]),
                        "ties_best": max(avg(v) for v in sweep.values()),
                        "task_arithmetic": avg(m["task_arith"]),  # a plain sum of the 8 updates (lam = 1)
                        "individual": avg(m["finetuned"]), "base": avg(m["no_merge"]),
                        "source": REPLICATION + " phase3_merging/results/phase3_*.json"},
    }


def _adaptation() -> dict:
    runs = _replication_json("phase4_subspace_training/results/phase4_multi_results.json")
    out = {}
    for k in (16, 4):
        rows = [r["runs"] for r in runs if r["k"] == k]
        # the replication's tables leave out task034, where every run and the base score 0 ("data issue")
        rows = [r for r in rows if any(v["final_acc"] > 0 for v in r.values())]
        acc = lambda name: _pct(np.mean([r[name]["final_acc"] for r in rows]))  # noqa: E731
        out[f"replication_k{k}"] = {"lora_r16": acc("lora_r16"), "subspace_plus_mean": acc(f"subspace_k{k}_with_mean"),
                                    "basis_only": acc(f"subspace_k{k}_basis_only")}
        if k == 16:
            out["replication_k16"] |= {"own_adapter": acc("held_out_pretrained_lora"), "base": acc("base")}
        out[f"replication_k{k}"]["source"] = REPLICATION
    return out


LORA_SPECTRA = _lora_spectra()
LORA_LOO = _lora_loo()
VIT = _vit()
MERGING = _merging()
ADAPTATION = _adaptation()
