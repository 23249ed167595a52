"""Reading and fetching weights: PEFT adapters, transformers checkpoints, kohya LoRAs, PEFT state dicts,
manifests, the verified hub download, the cache, population fingerprints, and the per-key population
spectra driver (run directories, resume). Imports uws_core.linalg only.

Modules: ``adapters``, ``cache``, ``checkpoints``, ``dtype_policy``, ``fingerprints``, ``hub``, ``hub_paths``, ``kohya``,
``manifests``, ``peft_state``, ``population_spectra``, ``resume_fingerprints``, ``run_dirs``, ``safe_paths``, ``scale``.
The names below are loaded on first use (importing the package stays cheap).
"""

from __future__ import annotations

from uws_core import lazy_exports

#: public name -> module of this package that defines it
_API = {
    "COMMITTED": "fingerprints",
    "CacheError": "cache",
    "DownloadReport": "hub",
    "FORMAT": "run_dirs",
    "FORMAT_VERSION": "run_dirs",
    "FileOutcome": "hub",
    "HubError": "hub",
    "LORA_A": "peft_state",
    "LORA_B": "peft_state",
    "PEFT_PREFIX": "peft_state",
    "ResumeError": "run_dirs",
    "SCALES": "scale",
    "UnsafePathError": "safe_paths",
    "build_cached": "cache",
    "check_relative_name": "safe_paths",
    "check_repo_id": "safe_paths",
    "check_weight": "dtype_policy",
    "checksum_problem": "hub",
    "committed_fingerprints": "fingerprints",
    "compact_lora_pair": "peft_state",
    "compare_fingerprints": "resume_fingerprints",
    "compare_with_committed": "fingerprints",
    "config_digest": "cache",
    "contained": "safe_paths",
    "default_cache_dir": "cache",
    "default_memory_limit_bytes": "dtype_policy",
    "dense_lora_state": "peft_state",
    "download_manifest": "hub",
    "drive_keys": "run_dirs",
    "file_sha256": "cache",
    "git_blob_sha1": "hub",
    "hub_offline": "hub",
    "join_lora_state": "peft_state",
    "key_filename": "run_dirs",
    "lock_entry": "hub",
    "lock_manifest": "hub",
    "lora_delta": "peft_state",
    "lora_pair_from_dense": "peft_state",
    "lora_products": "peft_state",
    "numerical_rank": "peft_state",
    "peft_state_from_dense": "peft_state",
    "peft_weight_key": "peft_state",
    "population_fingerprint": "fingerprints",
    "population_fingerprints": "resume_fingerprints",
    "prepare_out": "run_dirs",
    "read_info": "cache",
    "read_key_result": "run_dirs",
    "record_fingerprints": "fingerprints",
    "save_peft_adapter": "peft_state",
    "scale": "scale",
    "select_keys": "run_dirs",
    "shape_problems": "hub",
    "side_dirs": "hub",
    "split_lora_state": "peft_state",
    "summarize": "run_dirs",
    "verify_cache_dir": "cache",
    "write_json_atomic": "run_dirs",
    "write_manifest": "cache",
    "write_text_atomic": "safe_paths",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
