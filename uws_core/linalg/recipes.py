"""The peers' three spectral recipes, by name, on stacks of LoRA factors or of full weights.

Each function computes exactly what one peer's script computes (the facts were read from their
files; the code is ours). ``uws spectrum --recipe NAME`` and ``uws spectra --recipe NAME`` run them.

``authors-pca`` -- the code behind the paper's scree plots, toshi2k2/unisub ``Mistral_LoRAs/run_pca.py``
(@ ed84420; the same loop in ``VIT/``, ``LLaMA/`` and ``GPT2/run_pca.py``). Per weight key: the
cross-model mean matrix is subtracted (L95-96), the N centred matrices are stacked along their first
axis (L97) and fitted with sklearn's PCA (L113-116). For LoRAs the keys are the stored factors, so
``lora_A`` (r, d_in) gives an (N*r, d_in) stack and ``lora_B`` (d_out, r) an (N*d_out, r) stack: B's
features are r-dimensional, and PCA keeps ``min(300, rows-1, cols-1)`` components (L113: at most r-1
for B), more when those explain < 90% (L123-137; a key whose larger refit is refused by sklearn is
skipped, L131-135). Each EVR is over all components (sklearn divides by the total variance; the
column mean it subtracts again is already zero). The average figure (``Mistral_LoRAs/generate_plots.py``
L22-43) zero-pads every key's EVR to the longest and averages over all keys, A and B keys together.
In uws terms: :func:`uws_core.linalg.spectral.stack_spectrum` with unfolding "rows", centring "models".

``authors-subspace`` -- the basis of the authors' reconstruction experiments, toshi2k2/unisub
``NLG/get_subspaceadapter.py`` (@ 0d39d03): each factor is made tall (``A_i^T``: d_in x r; B_i as
stored: d_out x r; L153-154), the N are concatenated side by side (d x N*r, L156), the row mean is
subtracted (L178-179) and ``torch.svd_lowrank(q=256, niter=40)`` gives the basis (L180);
reconstructions do not add the mean back (L185-221). In uws terms: A "rows" and B "cols" centred by
the mean sample (:func:`uws_core.linalg.lora.lora_factor_spectra`), the adapter views uws reported before
recipes had names; we take all components exactly (dense SVD), which agrees with ``svd_lowrank`` at
full ``q`` to round-off (tests/test_recipes.py).

``replication`` -- cahlen/universal-subspace-stress-test ``experiments/phase1_lora_spectral/analyze.py``
(@ dd57f0c): dW_i = B_i @ A_i **without** alpha/r (L116), flattened to (N, d_out*d_in) (L117), the mean
row subtracted and the singular values taken from the N x N Gram by ``eigvalsh`` (L54-63, L118-123).
Its null: i.i.d. Gaussian A and B with the *global* standard deviation of the real A and B stacks
(``torch.std``, unbiased, over all N*r*d_in entries; L126-136). Its reconstruction error at k is
``sqrt(sum_{i>k} s_i^2 / ||X||_F^2)`` with X uncentred: in-sample, the mean added back (L138-148). In
uws terms: :func:`uws_core.linalg.lora.lora_product_spectrum`, model axis, centring "models", scaling 1.

Scaling: ``"alpha-over-r"`` multiplies each product by its adapter's lora_alpha / r (the weight update
PEFT applies; uws's generic product), ``"none"`` leaves B_i @ A_i as stored (the replication). The two
agree when every adapter has the same alpha (Lots-of-LoRAs: alpha 32, r 16).
"""

from __future__ import annotations

import numpy as np
import torch

from uws_core.linalg.device import ACCUM_DTYPE, as_tensor
from uws_core.linalg.lora import lora_factor_spectra, lora_product_spectrum
from uws_core.linalg.lora_model_basis import check_lora_pairs
from uws_core.linalg.spectral import Spectrum, stack_spectrum

__all__ = ["RECIPES", "SCALINGS", "SOURCES", "authors_pca", "authors_pca_lora", "authors_pca_n_components",
           "authors_pca_evr", "authors_figure_evr", "authors_subspace", "replication", "replication_null",
           "replication_recon_errors", "product_scaling", "global_std", "lora_uncentred_norm_sq"]

RECIPES = ("authors-pca", "authors-subspace", "replication")
SCALINGS = ("alpha-over-r", "none")
#: which peer file each recipe follows (printed in output files and figure titles)
SOURCES = {
    "authors-pca": "toshi2k2/unisub Mistral_LoRAs/run_pca.py (mean matrix removed, rows stacked, sklearn PCA)",
    "authors-subspace": "toshi2k2/unisub NLG/get_subspaceadapter.py (tall factors side by side, row mean removed)",
    "replication": "cahlen/universal-subspace-stress-test phase1_lora_spectral/analyze.py (B@A flattened, centred)",
}
#: the product's scaling each recipe uses unless told otherwise
DEFAULT_SCALING = {"authors-pca": "none", "authors-subspace": "none", "replication": "none", None: "alpha-over-r"}
AUTHORS_MAX_COMPONENTS = 300  # run_pca.py L11 / L113
AUTHORS_EV_TARGET = 0.90  # run_pca.py L123


def check_recipe(recipe: str | None) -> str | None:
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    return recipe


def product_scaling(scaling: str, scalings) -> np.ndarray | None:
    """Per-adapter factor for B_i @ A_i: ``scalings`` (alpha_i / r) for "alpha-over-r", None (= 1) for "none"."""
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    return None if scaling == "none" else np.asarray(scalings, dtype=np.float64)


# ------------------------------------------------------------------------------------------- authors-pca

def authors_pca(stack, device=None) -> Spectrum:
    """authors-pca on one key: stack (N, d_out, d_in) -> spectrum of the (N*d_out, d_in) stack of the
    matrices minus their cross-model mean (run_pca.py L95-97). All components; see
    :func:`authors_pca_evr` for the ones the authors' PCA keeps."""
    return stack_spectrum(stack, "rows", "models", k=0, device=device)


def authors_pca_lora(B, A, device=None) -> tuple[Spectrum, Spectrum]:
    """authors-pca on one LoRA module: (spectrum of the ``lora_A`` stack (N*r, d_in), spectrum of the
    ``lora_B`` stack (N*d_out, r)), each after subtracting its cross-model mean factor. Factors as stored
    (no alpha/r: the authors read the safetensors, run_pca.py L74)."""
    b, a = check_lora_pairs(B, A)  # (N, d_out, r), (N, r, d_in)
    return authors_pca(a, device=device), authors_pca(b, device=device)


def authors_pca_n_components(n_rows: int, n_cols: int, evr) -> int | None:
    """Components the authors' PCA keeps for a stack of ``n_rows x n_cols`` with full EVR ``evr``.

    ``min(300, n_rows - 1, n_cols - 1)`` (run_pca.py L113); if those explain < 0.90, a refit with
    ``min(int(n / e * 0.9), n_rows - 1)`` (L123-130), which sklearn refuses (and run_pca.py skips the key,
    L131-135: None here) when it exceeds ``min(n_rows, n_cols)``. None also for a key with no variance."""
    evr = np.asarray(evr, dtype=np.float64)
    n = min(AUTHORS_MAX_COMPONENTS, n_rows - 1, n_cols - 1)
    if n < 1 or not np.isfinite(evr).all() or evr.sum() <= 0:
        return None
    e = float(evr[:n].sum())
    if e < AUTHORS_EV_TARGET:
        n = min(int(n / e * AUTHORS_EV_TARGET), n_rows - 1)
        if n > min(n_rows, n_cols):
            return None
    return n


def authors_pca_evr(spec: Spectrum) -> np.ndarray | None:
    """The EVR list the authors save for one key (``pca.explained_variance_ratio_``): the first
    :func:`authors_pca_n_components` ratios over the total variance; None for a key they skip."""
    if spec.unfolding != "rows" or spec.center != "models":
        raise ValueError(f"authors-pca spectra are rows / models, got {spec.unfolding} / {spec.center}")
    n_rows, n_cols = spec.n_models * spec.matrix_shape[0], spec.matrix_shape[1]
    evr = spec.evr()
    n = authors_pca_n_components(n_rows, n_cols, evr)
    if n is None:
        return None
    full = np.zeros(n)
    full[:min(n, evr.shape[0])] = evr[:n]
    return full


def authors_figure_evr(evrs) -> np.ndarray:
    """The authors' average scree (generate_plots.py L22-43): every key's EVR zero-padded to the longest,
    then the mean over keys (skipped keys, None, are left out as their script never saved them)."""
    evrs = [np.asarray(e, dtype=np.float64) for e in evrs if e is not None]
    if not evrs:
        raise ValueError("no key has an authors-pca EVR")
    width = max(e.shape[0] for e in evrs)
    return np.stack([np.pad(e, (0, width - e.shape[0])) for e in evrs]).mean(axis=0)


# -------------------------------------------------------------------------------------- authors-subspace

def authors_subspace(B, A, k: int | None = 0, device=None) -> tuple[Spectrum, Spectrum]:
    """authors-subspace on one LoRA module: (spectrum of the A_i^T side by side, d_in x N*r, spectrum of
    the B_i side by side, d_out x N*r), each minus its row mean (get_subspaceadapter.py L153-180). These
    are uws's A "rows" / B "cols" spectra centred by the mean sample; ``k`` basis vectors are kept (0: none).
    Factors as stored."""
    return lora_factor_spectra(B, A, center="samples", k=k, device=device)


# ------------------------------------------------------------------------------------------- replication

def replication(B, A, scaling=None, k: int | None = 0, device=None, key=None) -> Spectrum:
    """replication on one LoRA module: spectrum of the flattened, centred products (N, d_out*d_in),
    computed from the N x N Gram in factored form (analyze.py L116-123). ``scaling`` None = 1 (theirs);
    pass ``product_scaling("alpha-over-r", alphas / r)`` for the scaled updates."""
    return lora_product_spectrum(B, A, unfolding="model", center="models", k=k, device=device, scaling=scaling,
                                 key=key)


def global_std(x) -> float:
    """Unbiased standard deviation of all entries of a stack (``torch.std`` default, analyze.py L126-127)."""
    t = as_tensor(x, dtype=None).to(ACCUM_DTYPE).reshape(-1)
    return float(t.std())


def replication_null(B, A, seed: int = 0, device=None) -> Spectrum:
    """The replication's null for one module: N rank-r products of i.i.d. Gaussian factors with the global
    std of the real A stack and of the real B stack (analyze.py L125-136), same recipe as
    :func:`replication`. Our generator (torch CPU, ``seed``) cannot reproduce their GPU draws; the null's
    EVR varies with the seed by a few 1e-3 at N = 100."""
    b, a = check_lora_pairs(B, A)
    sigma_a, sigma_b = global_std(a), global_std(b)
    gen = torch.Generator().manual_seed(int(seed))
    a_null = torch.randn(a.shape, generator=gen, dtype=ACCUM_DTYPE) * sigma_a  # (N, r, d_in)
    b_null = torch.randn(b.shape, generator=gen, dtype=ACCUM_DTYPE) * sigma_b  # (N, d_out, r)
    return replication(b_null, a_null, device=device)


def lora_uncentred_norm_sq(B, A, scaling=None) -> float:
    """``sum_i ||s_i B_i A_i||_F^2`` from the factors: ``tr((B_i^T B_i)(A_i A_i^T))`` per adapter."""
    b, a = check_lora_pairs(B, A)
    b, a = b.to(ACCUM_DTYPE), a.to(ACCUM_DTYPE)
    per = torch.einsum("nor,nos,nrp,nsp->n", b, b, a, a)  # (N,)
    if scaling is not None:
        per = per * torch.as_tensor(np.asarray(scaling, dtype=np.float64)) ** 2
    return float(per.sum())


def replication_recon_errors(spec: Spectrum, uncentred_norm_sq: float, ks=(1, 2, 4, 8, 16, 32, 64)) -> dict:
    """The replication's relative reconstruction error at each k: ``sqrt(sum_{i>k} s_i^2 / ||X||_F^2)`` with
    X the uncentred stack, i.e. the in-sample error of mean + top-k reconstruction (analyze.py L142-148;
    its list also has ``min(N - 1, 96)``, add it to ``ks`` to match). Keys are ints as in its report."""
    var = np.asarray(spec.variances, dtype=np.float64)
    if not uncentred_norm_sq > 0:
        raise ValueError("the uncentred norm must be positive")
    return {int(k): float(np.sqrt(var[k:].sum() / uncentred_norm_sq)) for k in ks if k <= spec.n_models}
