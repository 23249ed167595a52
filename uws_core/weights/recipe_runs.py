"""Running a named recipe (:mod:`uws_core.linalg.recipes`) over a population: per-key summaries for
``uws spectrum --recipe`` and the per-key hook of ``uws spectra --recipe`` (:mod:`uws_core.weights.population_spectra`).

Every summary carries ``"recipe"`` (and ``"scaling"`` where a product is formed) so no output file can be
read as another recipe's. authors-pca summaries add ``authors_evr`` (the EVR list the authors' PCA keeps,
:func:`uws_core.linalg.recipes.authors_pca_evr`) and the population summary adds ``authors_figure_evr`` (their
zero-padded mean over keys). replication summaries add its null (global-std Gaussian factors), its
in-sample reconstruction errors and the mean's share of the norm, as in its ``phase1_report.json``.
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from uws_core.linalg import recipes
from uws_core.linalg.numerics import progress_disabled
from uws_core.weights.adapters import AdapterSet, parse_module_key
from uws_core.linalg.spectral import StreamingSpectrum

REPLICATION_RECON_KS = (1, 2, 4, 8, 16, 32, 64)
NULL_SEED = 42  # the replication's null_seed_base (analyze.py L69); ours adds the key index as it does


def _authors_part(spec, summarize) -> dict:
    evr = recipes.authors_pca_evr(spec)
    return {**summarize(spec), "authors_n_components": None if evr is None else int(len(evr)),
            "authors_evr": None if evr is None else [float(v) for v in evr]}


def lora_recipe_parts(B, A, scalings, recipe: str, scaling: str, summarize, device=None, key=None,
                      null_seed: int = NULL_SEED) -> dict:
    """One module's spectra under ``recipe``: {"lora_A", "lora_B"} (authors) or {"product"} (replication).

    B (N, d_out, r), A (N, r, d_in) as stored; ``scalings`` (N,) alpha_i / r; ``summarize(spec) -> dict``."""
    recipes.check_recipe(recipe)
    if recipe == "authors-pca":
        sa, sb = recipes.authors_pca_lora(B, A, device=device)
        return {"lora_A": _authors_part(sa, summarize), "lora_B": _authors_part(sb, summarize)}
    if recipe == "authors-subspace":
        sa, sb = recipes.authors_subspace(B, A, k=0, device=device)
        return {"lora_A": summarize(sa), "lora_B": summarize(sb)}
    s = recipes.product_scaling(scaling, scalings)
    spec = recipes.replication(B, A, scaling=s, device=device, key=key)
    null = recipes.replication_null(B, A, seed=null_seed, device=device)
    norm_sq = recipes.lora_uncentred_norm_sq(B, A, s)
    n = spec.n_models
    ks = REPLICATION_RECON_KS + ((min(n - 1, 96),) if min(n - 1, 96) not in REPLICATION_RECON_KS else ())
    return {"product": {**summarize(spec), "scaled": s is not None, "null": summarize(null),
                        "sigma_A": recipes.global_std(A), "sigma_B": recipes.global_std(B),
                        "uncentered_norm_sq": norm_sq,
                        "mean_energy_fraction": 1.0 - float(spec.total_variance) / norm_sq,
                        "recon_err": {str(k): v for k, v in recipes.replication_recon_errors(spec, norm_sq, ks).items()}}}


def figure_evr(keys: dict) -> dict:
    """authors-pca: the zero-padded mean EVR over keys (all keys, as the authors' plot, and per part)."""
    by_part: dict[str, list] = {}
    for res in keys.values():
        parts = res.get("spectra", res)
        for part, summ in parts.items():
            if isinstance(summ, dict) and "authors_evr" in summ:
                by_part.setdefault(part, []).append(summ["authors_evr"])
    out = {part: [float(v) for v in recipes.authors_figure_evr(evrs)] for part, evrs in by_part.items()
           if any(e is not None for e in evrs)}
    every = [e for evrs in by_part.values() for e in evrs]
    if len(by_part) > 1 and any(e is not None for e in every):
        out["all_keys"] = [float(v) for v in recipes.authors_figure_evr(every)]
    return out


def check_kind(recipe: str | None, kind: str) -> None:
    """Checkpoints have only the authors-pca recipe (the other two are LoRA recipes)."""
    if recipe is not None and kind != "adapters" and recipe != "authors-pca":
        raise ValueError(f"recipe {recipe!r} is a LoRA recipe (factors / B@A); for {kind} use authors-pca or "
                         "--unfolding/--center")


# ------------------------------------------------------------------------------ uws spectrum --recipe

def recipe_spectra(pop, kind: str, keys: list[str], recipe: str, scaling: str, k: int, spectrum_summary,
                   checkpoint_spectra, device=None) -> dict:
    """``uws spectrum --recipe``: per key, the spectra of a named recipe, summarised by the CLI's
    ``spectrum_summary(spec, k)``; checkpoints go through its ``checkpoint_spectra`` (rows, models)."""
    check_kind(recipe, kind)
    summ = lambda spec: spectrum_summary(spec, k)  # noqa: E731
    out = {}
    if kind == "checkpoints":  # authors-pca = rows unfolding, mean matrix removed
        for key, res in checkpoint_spectra(pop, keys, "rows", "models", k, device=device).items():
            n_rows, n_cols = res["N"] * res["shape"][0], res["shape"][1]
            n = recipes.authors_pca_n_components(n_rows, n_cols, res["evr"])
            out[key] = {"layer": res["layer"], "module": res["module"], "recipe": recipe,
                        "weight": {**{k_: v for k_, v in res.items() if k_ not in ("layer", "module")},
                                   "authors_n_components": n, "authors_evr": None if n is None else res["evr"][:n]}}
        return out
    for key in tqdm(keys, desc="module keys", disable=progress_disabled()):
        b, a = pop.factors(key)  # (N, d_out, r), (N, r, d_in), as stored
        d_out, r, d_in = pop.shape(key)
        layer, module = parse_module_key(key)
        parts = lora_recipe_parts(b, a, pop.scalings, recipe, scaling, summ, device=device, key=key,
                                  null_seed=NULL_SEED + pop.module_keys.index(key))
        out[key] = {"layer": layer, "module": module, "shape": [d_out, d_in], "rank": r, "N": len(pop),
                    "recipe": recipe, **parts}
    return out


# ------------------------------------------------------------------------- uws spectra (population) hook

def run_settings(recipe: str | None, scaling: str) -> dict:
    """Settings a recipe run adds to ``run.json`` (none for the generic, scaled default: older runs resume)."""
    recipes.check_recipe(recipe)
    if scaling not in recipes.SCALINGS:
        raise ValueError(f"scaling must be one of {recipes.SCALINGS}, got {scaling!r}")
    if recipe is None and scaling == "alpha-over-r":
        return {}
    return {"recipe": recipe, "scaling": scaling,
            **({"recipe_source": recipes.SOURCES[recipe]} if recipe else {})}


def population_key(recipe: str, scaling: str, pop, key, unfolding, center, ks, thresholds, evr_head, basis_k, dev,
                   max_key_bytes, out, *, summarize, key_header, memory_bound_bytes, model_axis_chunk) -> dict:
    """``population_spectra``'s per-key function for a named recipe (same arguments as its ``_adapter_key``); the
    keyword helpers are population_spectra's own (passed in, so this module does not import it back)."""
    summ = lambda spec: summarize(spec, ks, thresholds, evr_head)  # noqa: E731
    t0 = time.perf_counter()
    if isinstance(pop, AdapterSet):
        d_out, r, d_in = pop.shape(key)
        bound = memory_bound_bytes((d_out, d_in), len(pop), "model", "models", lora_rank=r, chunk=max(1, 1024 // r))
        if max_key_bytes is not None and bound["total"] > max_key_bytes:
            return {"too_big": bound}
        b, a = pop.factors(key)  # (N, d_out, r), (N, r, d_in) float64, as stored
        seed = NULL_SEED + list(pop.module_keys).index(key)
        spectra = lora_recipe_parts(b, a, pop.scalings, recipe, scaling, summ, device=dev, key=key, null_seed=seed)
        header = key_header(key, pop, (d_out, d_in), (d_out, d_in), "as stored: B (out, r), A (r, in)")
        return {**header, "rank": r, "recipe": recipe, "spectra": spectra, "memory_bound_bytes": bound,
                "timing": {"compute_s": time.perf_counter() - t0}}
    check_kind(recipe, "checkpoints")
    shape = pop.shapes[key]
    bound = memory_bound_bytes(shape, len(pop), "rows", "models", 8, chunk=model_axis_chunk(shape[0] * shape[1]))
    if max_key_bytes is not None and bound["total"] > max_key_bytes:
        return {"too_big": bound}
    acc = StreamingSpectrum("rows", "models", shape=shape, device=dev, key=key)
    for i, name in enumerate(pop.names):
        acc.add(pop.load(i, key), name=name)  # (d_out, d_in), oriented as analysed
    spec = acc.finalize(k=0)
    return {**key_header(key, pop, shape, pop.stored_shapes[key], pop.orientation[key]), "recipe": recipe,
            "stored_dtype": pop.stored_dtype(key), "spectra": {"weight": _authors_part(spec, summ)},
            "memory_bound_bytes": bound, "timing": {"compute_s": time.perf_counter() - t0}}


def finish_summary(summary: dict) -> dict:
    """Population summary of a run: ``recipe`` (None for the generic unfolding) and, for authors-pca, the
    authors' average figure."""
    summary.setdefault("recipe", None)
    if summary.get("recipe") == "authors-pca" and summary["keys"]:
        summary["authors_figure_evr"] = figure_evr(summary["keys"])
    return summary

