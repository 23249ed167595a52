"""The SVD module: unfoldings and centring, in-memory / streaming / factored (LoRA) spectra, the eigen
solvers (the only place that calls eigh / svd), subspaces (EVR, projection, angles, random bases),
nulls, and the device, dtype and numerical-environment policy. Imports nothing else of uws_core.

Modules: ``device``, ``lora``, ``nulls``, ``numerics``, ``recipes``, ``spectral``, ``subspace``, ``varying_rank``.
The names below are loaded on first use (importing the package stays cheap).
"""

from __future__ import annotations

from uws_core import lazy_exports

#: public name -> module of this package that defines it
_API = {
    "ACCUM_DTYPE": "device",
    "CENTERS": "spectral",
    "ChunkedGram": "subspace",
    "FactoredModelBasis": "lora",
    "FactoredProductGram": "varying_rank",
    "KERNEL_THREADS": "numerics",
    "NonFiniteWeightError": "spectral",
    "OPT_OUT": "numerics",
    "PINNED_ENV": "numerics",
    "PINNED_PROFILE": "numerics",
    "PROGRESS_ENV": "numerics",
    "RECIPES": "recipes",
    "SCALINGS": "recipes",
    "SOURCES": "recipes",
    "ShapeMismatchError": "spectral",
    "Spectrum": "spectral",
    "StackedRowSpectrum": "varying_rank",
    "StreamingLoraSpectrum": "lora",
    "StreamingSpectrum": "spectral",
    "UNFOLDINGS": "spectral",
    "as_tensor": "device",
    "authors_figure_evr": "recipes",
    "authors_pca": "recipes",
    "authors_pca_evr": "recipes",
    "authors_pca_lora": "recipes",
    "authors_pca_n_components": "recipes",
    "authors_subspace": "recipes",
    "center_stack": "spectral",
    "compute_settings": "numerics",
    "cpu_has_avx2": "numerics",
    "eigh_descending": "subspace",
    "explained_variance_ratio": "subspace",
    "gaussian_like": "nulls",
    "gaussian_lora_like": "nulls",
    "global_std": "recipes",
    "gram_top_evr": "subspace",
    "is_pinned": "numerics",
    "k_for_threshold": "subspace",
    "kernel_report": "numerics",
    "lora_factor_spectra": "lora",
    "lora_product_spectrum": "lora",
    "lora_products": "lora",
    "lora_uncentred_norm_sq": "recipes",
    "marchenko_pastur_pdf": "nulls",
    "marchenko_pastur_spectrum": "nulls",
    "marchenko_pastur_support": "nulls",
    "model_axis_eigen": "subspace",
    "native_requested": "numerics",
    "orthonormalize": "subspace",
    "pick_device": "device",
    "pin_environment": "numerics",
    "pinned_env": "numerics",
    "principal_angles": "subspace",
    "product_scaling": "recipes",
    "profile": "numerics",
    "progress_disabled": "numerics",
    "project": "subspace",
    "random_orthonormal_basis": "subspace",
    "reconstruct": "subspace",
    "replication": "recipes",
    "replication_null": "recipes",
    "replication_recon_errors": "recipes",
    "single_thread_kernels": "numerics",
    "stable_seed_32": "numerics",
    "stable_seed_63": "numerics",
    "stable_seed_63_masked": "numerics",
    "stack_spectrum": "spectral",
    "transformers_quiet": "numerics",
    "unfold": "spectral",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
