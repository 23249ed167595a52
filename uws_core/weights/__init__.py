"""Reading and fetching weights: PEFT adapters, transformers checkpoints, kohya LoRAs, PEFT state dicts,
manifests, the verified hub download, the cache, population fingerprints, and the per-key population
spectra driver (run directories, resume). Imports uws_core.linalg only.
The names below are loaded on first use (importing the package stays cheap).
"""

from __future__ import annotations

from uws_core import lazy_exports

#: module of this package -> the public names it defines (each module's own __all__)
_API = {
    "cache": (
        "CacheError", "build_cached", "config_digest", "copy_entry", "default_cache_dir", "read_info",
        "verify_cache_dir", "write_manifest"),
    "dense_delta": (
        "DELTA_FILE", "DELTA_META", "DenseDeltaError", "add_dense_delta", "is_dense_delta", "pair_is_larger",
        "read_dense_delta", "restore_weights", "write_dense_delta"),
    "dtype_policy": (
        "FLOAT_CODES", "MEMORY_FRACTION", "available_memory_bytes", "check_alpha", "check_rank", "check_weight",
        "default_memory_limit_bytes", "format_gib"),
    "file_checks": ("checksum_problem", "file_sha256", "git_blob_sha1", "shape_problems"),
    "fingerprints": (
        "COMMITTED", "committed_fingerprints", "compare_with_committed", "population_fingerprint", "record_fingerprints"),
    "hub": ("HubError", "download_manifest", "hub_offline", "lock_entry", "lock_manifest"),
    "hub_paths": (
        "DownloadReport", "EntryPaths", "FileOutcome", "STAMP_FILE", "check_entry_file_name", "entry_paths",
        "free_bytes", "move_file", "read_stamp", "side_dirs", "stamp_of", "unpublish", "write_stamp"),
    "key_spectra": ("THRESHOLDS", "adapter_spectra", "checkpoint_spectra", "spectrum_summary"),
    "memory_bounds": (
        "GRAM_CHUNK_BYTES", "STORED_BYTES", "factored_memory_bound_bytes", "in_memory_key_bound_bytes",
        "kohya_memory_bound_bytes", "memory_bound_bytes", "model_axis_chunk"),
    "peft_state": (
        "LORA_A", "LORA_B", "PEFT_PREFIX", "compact_lora_pair", "dense_lora_state", "join_lora_state", "lora_delta",
        "lora_pair_from_dense", "lora_products", "numerical_rank", "peft_state_from_dense", "peft_weight_key",
        "save_peft_adapter", "split_lora_state"),
    "resume_fingerprints": (
        "CONTENT_HASH_MAX_BYTES", "compare_fingerprints", "file_fingerprint", "model_files", "population_fingerprints"),
    "run_dirs": (
        "FORMAT", "FORMAT_VERSION", "ResumeError", "drive_keys", "key_filename", "prepare_out", "read_key_result",
        "select_keys", "summarize", "write_json_atomic"),
    "safe_paths": (
        "UnsafePathError", "check_relative_name", "check_repo_id", "contained", "write_bytes_atomic",
        "write_text_atomic"),
    "safetensors_header": (
        "CheckpointFormatError", "MissingCheckpointFileError", "WeightFormatError", "read_safetensors_header"),
    "scale": ("SCALES", "scale"),
}

__all__ = sorted(name for names in _API.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _API)
