"""The paper's uses of the subspace: merging, coefficient-only adaptation, leave-one-out projection and
accuracy, compression accounting, the shared-initialisation study and the task evaluation of the
Mistral-7B adapters. Imports linalg, weights, zoo.
The names below are loaded on first use (importing the package stays cheap).
"""

from __future__ import annotations

from uws_core import lazy_exports

#: module of this package -> the public names it defines (each module's own __all__)
_API = {
    "adaptation": (
        "Adapter", "fit_runs", "functional_forward", "lora_update", "random_basis", "subspace_update",
        "sweep_then_seeds", "task_vector_basis", "trainable_parameter_count"),
    "adaptation_data": (
        "HELD_OUT_FAMILIES", "LoraAdaptationData", "VIT_BASE_ID", "VitAdaptationData", "held_out_lora_tasks",
        "lora_adaptation_laptop", "vit_adaptation_laptop", "vit_adaptation_paper", "vit_task_vector_bases"),
    "adaptation_tasks": ("lm_loss_fn", "vit_accuracy", "vit_loss_fn"),
    "compression": (
        "LORA_RECIPES", "PAPER_LORA_SHAPES", "PAPER_SHAPES", "full_numbers", "lora_full_numbers", "lora_stored_numbers",
        "ratio", "savings", "stored_numbers"),
    "lora_coefficients": (
        "CoefficientBasis", "CoefficientLayers", "CoefficientSettings", "VARIANTS", "answer_nll", "answer_token_ids",
        "coefficient_pairs", "coefficient_pairs_to_compare", "coefficient_study", "combination_weights",
        "paper_adapters", "random_model_axis_coefficients", "train_coefficients", "write_combination"),
    "lora_loo_accuracy": ("bootstrap_mean_ci", "loo_reconstruction_accuracy", "population_stack"),
    "lora_projection": (
        "CONTROLS", "K_GRID", "LoraStack", "ProductLeaveOneOut", "RECIPES", "compact_product_pair", "fit_factor_basis",
        "indices_without", "loo_reconstructions", "loo_relative_errors", "mean_of_others", "project_factors",
        "random_factor_basis"),
    "merging": (
        "SubspaceBasis", "TIES_CONVENTIONS", "apply_delta", "check_deltas", "dare_merge", "fit_subspace",
        "lora_svd_aligned_merge", "mean_merge", "norm", "sign_agreement", "subspace_merge", "svd_aligned_merge",
        "task_arithmetic", "task_vectors", "ties_merge", "ties_tensor", "ties_trim"),
    "peft_merge": ("peft_factor_merge",),
    "replication_loo": (
        "BASIS_ONLY", "basis_only_accuracy", "basis_only_reconstructions", "in_sample_relative_errors", "with_scaling"),
    "task_adapters": ("heldout_variants", "merge_variants", "write_adapter_state", "write_variants"),
    "task_data": (
        "TASK_FILES", "TaskDataError", "TaskExample", "load_task_split", "task_data_dirs", "task_list",
        "task_manifest_from_loras"),
    "task_eval": (
        "DECODINGS", "Decoding", "Evaluator", "MISTRAL_7B", "PROMPT", "TaskEvalError", "build_prompt", "evaluate_task",
        "evaluate_tasks", "generation_memory_bytes", "load_summaries", "read_results"),
    "task_eval_cli": ("add_evaluate_parser", "run_evaluate"),
    "task_scores": (
        "METRICS", "bootstrap_task_mean_ci", "exact_match", "normalize_answer", "paired_difference_ci", "rouge_l",
        "score_prediction", "summarize"),
    "task_study": (
        "FunctionalSetup", "MERGE_RIVALS", "available_tasks", "compression_study", "evaluate_runs", "format_table",
        "functional_setup", "gain_kept", "loo_pairs", "loo_study", "merge_study", "paired_table", "rouge_table",
        "run_name", "write_in_sample_variants", "write_loo_variants"),
    "views": ("AUTHORS_FACTOR_VIEWS", "checkpoint_key_spectra_with_null", "lora_view_spectra"),
}

__all__ = sorted(name for names in _API.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _API)
