"""The SVD module: unfoldings and centring, in-memory / streaming / factored (LoRA) spectra, the eigen
solvers (the only place that calls eigh / svd), subspaces (EVR, projection, angles, random bases),
nulls, and the device, dtype and numerical-environment policy. Imports nothing else of uws_core.
The names below are loaded on first use (importing the package stays cheap).
"""

from __future__ import annotations

from uws_core import lazy_exports

#: module of this package -> the public names it defines (each module's own __all__)
_API = {
    "conventions": ("CENTERS", "DEFAULT_SCALING", "RECIPES", "SCALINGS", "UNFOLDINGS"),
    "device": ("ACCUM_DTYPE", "as_tensor", "pick_device"),
    "eigvals": ("EIGVALS_ENV", "TWO_STAGE_MIN_N", "symmetric_eigvals", "two_stage_available", "two_stage_eigvals"),
    "factored_spectra": (
        "center_rows", "factored_lora_spectra", "factored_product_spectrum", "product_feature_gram",
        "product_feature_spectrum", "stacked_rows_spectrum", "uses_small_gram"),
    "lora": ("StreamingLoraSpectrum", "lora_factor_spectra", "lora_product_spectrum", "lora_products"),
    "lora_model_basis": (
        "FactoredModelBasis", "LoraChunkLayout", "check_lora_pairs", "concat_chunks", "lora_gram_block",
        "lora_scaling_vector"),
    "nulls": (
        "gaussian_like", "gaussian_lora_like", "marchenko_pastur_pdf", "marchenko_pastur_spectrum",
        "marchenko_pastur_support"),
    "numerics": (
        "KERNEL_THREADS", "OPT_OUT", "PINNED_ENV", "PINNED_PROFILE", "PROGRESS_ENV", "compute_settings", "cpu_has_avx2",
        "is_pinned", "kernel_report", "native_requested", "paper_scale_requested", "pin_environment", "pinned_env",
        "profile", "progress_disabled", "release_pin", "single_thread_kernels", "stable_seed_32", "stable_seed_63",
        "stable_seed_63_masked", "thread_settings", "transformers_quiet", "unpinned_env"),
    "partial_eigen": ("TOPK_MAX_ITER", "TOPK_TOL", "TopEig", "dense_operator", "top_eigvalsh"),
    "recipes": (
        "SOURCES", "authors_figure_evr", "authors_pca", "authors_pca_evr", "authors_pca_lora",
        "authors_pca_n_components", "authors_subspace", "global_std", "lora_uncentred_norm_sq", "product_scaling",
        "replication", "replication_null", "replication_recon_errors"),
    "scatter": ("RowScatter", "USE_SYRK_ON_CPU", "symmetrize_from_lower_", "syrk_lower_update", "use_syrk"),
    "spectral": (
        "NonFiniteWeightError", "ShapeMismatchError", "Spectrum", "StreamingSpectrum", "center_stack", "stack_spectrum",
        "unfold"),
    "subspace": (
        "ChunkedGram", "eigh_descending", "explained_variance_ratio", "gram_top_evr", "k_for_threshold",
        "model_axis_eigen", "orthonormalize", "principal_angles", "project", "random_orthonormal_basis", "reconstruct"),
    "varying_rank": ("FactoredProductGram", "StackedRowSpectrum"),
}

__all__ = sorted(name for names in _API.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _API)
