"""Untrained populations: N randomly initialised copies of one transformers architecture, on disk.

The paper's random-init claim ("500 randomly initialised ViTs share a low-rank subspace") is tested on
models nobody publishes, because they are cheap to make: this module makes them, with transformers' own
initialiser, from the ``config.json`` of a real checkpoint (e.g. ``google/vit-base-patch16-224``), one seed
per model, and writes each with ``save_pretrained`` (config.json + model.safetensors), so the same loaders
and the same notebook code read them as the trained populations. The set is cached by
:mod:`uws_core.weights.cache` under a digest of the config, the seeds and the library versions.

Memory: one model at a time (ViT-B/16: 86 M parameters, 344 MB in float32); disk: N times that.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from uws_core.linalg.numerics import progress_disabled, transformers_quiet
from uws_core.weights.cache import build_cached, config_digest, default_cache_dir

__all__ = ["architecture_class", "random_init_model", "write_random_inits"]
FORMAT_VERSION = 1


def architecture_class(config):
    """The transformers model class named by ``config.architectures[0]`` (e.g. ViTForImageClassification)."""
    import transformers

    names = getattr(config, "architectures", None) or []
    if not names:
        raise ValueError(f"config of model_type {config.model_type!r} names no architecture "
                         "(config.json has no 'architectures' entry)")
    cls = getattr(transformers, names[0], None)
    if cls is None:
        raise ValueError(f"transformers has no class {names[0]!r} (from config.json 'architectures')")
    return cls


def random_init_model(config, seed: int):
    """transformers' own random initialisation of ``config``'s architecture under ``seed`` (global RNG kept)."""
    cls = architecture_class(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return cls(config).eval()


def write_random_inits(config_dir: Path | str, n: int, seed: int = 0, cache_dir: Path | str | None = None,
                       progress: bool = False) -> list[Path]:
    """Directories of ``n`` untrained models of the architecture in ``config_dir/config.json``, seeds
    ``seed .. seed + n - 1``; built once into ``<cache>/random_init/<digest>/seed_<s>/`` and reused.

    Raises FileNotFoundError naming ``config.json`` if it is missing.
    """
    from transformers import AutoConfig

    path = Path(config_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json to initialise models from")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    raw = json.loads(path.read_text())
    config = AutoConfig.from_pretrained(str(config_dir), trust_remote_code=False)  # never run code from a config
    seeds = list(range(int(seed), int(seed) + int(n)))
    digest = config_digest({"config": raw, "seeds": seeds}, FORMAT_VERSION)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    def build(tmp: Path) -> dict:
        from tqdm.auto import tqdm

        with transformers_quiet():
            for s in tqdm(seeds, desc="random inits", disable=progress_disabled(progress)):
                random_init_model(config, s).save_pretrained(tmp / f"seed_{s}", safe_serialization=True)
        return {"source_config": str(path), "architecture": config.architectures[0], "seeds": seeds}

    final = build_cached(root / "random_init" / digest, build, FORMAT_VERSION)
    return [final / f"seed_{s}" for s in seeds]
