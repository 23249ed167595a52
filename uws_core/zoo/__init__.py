"""The laptop populations our code trains on a CPU: task generators, the tiny Mistral / ViT / Llama
models, their trainers, random-init populations and the build of every population and seed.
Imports uws_core.linalg and uws_core.weights.
The names below are loaded on first use (importing the package stays cheap).
"""

from __future__ import annotations

from uws_core import lazy_exports

#: module of this package -> the public names it defines (each module's own __all__)
_API = {
    "inits": ("architecture_class", "random_init_model", "write_random_inits"),
    "llama_model": (
        "MATRIX_TYPES", "evaluate_models", "init_state", "llama_config", "llama_logits", "save_llama",
        "seeded_llama_model", "train_models"),
    "llama_tasks": (
        "DOMAINS", "TASK_GROUPS", "examples_of", "finetune_plan", "language_map", "translate", "translate_examples",
        "verify_examples"),
    "llama_zoo": (
        "LlamaPopulation", "LlamaZooConfig", "base_key", "build_llama_population", "trained_base", "unseen_finetune"),
    "lora_zoo": ("LoraPopulation", "LoraPopulationConfig", "build_lora_population", "code_digest"),
    "lr_schedule": ("warmup_cosine", "warmup_cosine_factor", "warmup_cosine_to_tenth"),
    "populations": (
        "KINDS", "SEEDS", "build", "build_all", "config_for", "fingerprint_tiny", "main", "population_names"),
    "pretrained": (
        "PRETRAINED_ROOT", "TRAIN_ENV", "copy_shipped_base", "shipped_base", "shipped_names", "shipped_or_trained",
        "train_requested"),
    "progress": ("bar", "enabled", "labelled", "set_slot"),
    "retrain_bases": ("check", "write"),
    "task_operations": (
        "INPUT_FORMATS", "OPERATIONS", "OUTPUT_FORMATS", "Operation", "exact_match", "format_input", "format_output"),
    "tasks": ("BaseMixture", "CharTokenizer", "Example", "Task", "make_tasks", "task_combinations"),
    "tinylm": (
        "MultiLora", "MultiLoraLinear", "accuracy", "answer_correct", "answer_nll", "encode_examples", "greedy_decode",
        "merge_lora_state", "mistral_config", "new_base_model", "train_adapters", "train_base"),
    "vit_model": (
        "class_mask", "evaluate_states", "pad_examples", "save_vit", "stacked_accuracy", "vit_config", "vit_logits"),
    "vit_tasks": (
        "LABEL_MAPS", "TRANSFORMS", "VitTask", "apply_transform", "held_out_split", "load_digit_images", "parse_task",
        "scratch_plan", "split_indices", "task_data", "task_name", "train_sample_indices"),
    "vit_zoo": ("BASE_FIELDS", "VitPopulations", "VitZooConfig", "build_vit_populations"),
}

__all__ = sorted(name for names in _API.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _API)
