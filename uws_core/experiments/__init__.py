"""The paper's uses of the subspace: merging, coefficient-only adaptation, leave-one-out projection and
accuracy, compression accounting and the shared-initialisation study. Imports linalg, weights, zoo.

Modules: ``adaptation``, ``adaptation_tasks``, ``compression``, ``lora_init``, ``lora_loo_accuracy``, ``lora_projection``, ``merging``, ``peft_merge``, ``replication_loo``, ``task_data``, ``views``.
The names below are loaded on first use (importing the package stays cheap).
"""

from __future__ import annotations

from uws_core import lazy_exports

#: public name -> module of this package that defines it
_API = {
    "AUTHORS_FACTOR_VIEWS": "views",
    "Adapter": "adaptation",
    "BASIS_ONLY": "replication_loo",
    "CONTROLS": "lora_projection",
    "K_GRID": "lora_projection",
    "LORA_RECIPES": "compression",
    "LoraMergeEvaluator": "merging",
    "LoraStack": "lora_projection",
    "PAPER_LORA_SHAPES": "compression",
    "PAPER_SHAPES": "compression",
    "ProductLeaveOneOut": "lora_projection",
    "RECIPES": "lora_projection",
    "SubspaceBasis": "merging",
    "TASK_FILES": "task_data",
    "TIES_CONVENTIONS": "merging",
    "TaskDataError": "task_data",
    "TaskExample": "task_data",
    "apply_delta": "merging",
    "basis_only_accuracy": "replication_loo",
    "basis_only_reconstructions": "replication_loo",
    "bootstrap_mean_ci": "lora_loo_accuracy",
    "check_deltas": "merging",
    "checkpoint_key_spectra_with_null": "views",
    "class_mask": "adaptation_tasks",
    "dare_merge": "merging",
    "fit_factor_basis": "lora_projection",
    "fit_runs": "adaptation",
    "fit_subspace": "merging",
    "full_numbers": "compression",
    "functional_forward": "adaptation",
    "in_sample_relative_errors": "replication_loo",
    "lm_loss_fn": "adaptation_tasks",
    "load_task_split": "task_data",
    "loo_reconstruction_accuracy": "lora_loo_accuracy",
    "loo_reconstructions": "lora_projection",
    "loo_relative_errors": "lora_projection",
    "lora_full_numbers": "compression",
    "lora_stored_numbers": "compression",
    "lora_svd_aligned_merge": "merging",
    "lora_update": "adaptation",
    "lora_view_spectra": "views",
    "mean_merge": "merging",
    "mean_of_others": "lora_projection",
    "norm": "merging",
    "peft_factor_merge": "peft_merge",
    "population_stack": "lora_loo_accuracy",
    "project_factors": "lora_projection",
    "random_basis": "adaptation",
    "random_factor_basis": "lora_projection",
    "ratio": "compression",
    "savings": "compression",
    "sign_agreement": "merging",
    "stored_numbers": "compression",
    "subspace_merge": "merging",
    "subspace_update": "adaptation",
    "svd_aligned_merge": "merging",
    "sweep_then_seeds": "adaptation",
    "task_arithmetic": "merging",
    "task_list": "task_data",
    "task_manifest_from_loras": "task_data",
    "task_vector_basis": "adaptation",
    "task_vectors": "merging",
    "ties_merge": "merging",
    "ties_tensor": "merging",
    "ties_trim": "merging",
    "trainable_parameter_count": "adaptation",
    "vit_accuracy": "adaptation_tasks",
    "vit_loss_fn": "adaptation_tasks",
    "vit_split": "adaptation_tasks",
    "vit_validation_indices": "merging",
    "with_scaling": "replication_loo",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
