"""The laptop populations' pretrained bases, shipped with the repository instead of trained on every clone.

The paper's populations are fine-tunes of a downloaded base (Mistral-7B, ViT-B, Llama-3-8B). Ours are
fine-tunes of small bases that our own code pretrains (:func:`uws_core.zoo.lora_zoo.trained_base`,
:func:`uws_core.zoo.llama_zoo.trained_base`, :func:`uws_core.zoo.vit_zoo.trained_base`); that pretraining was the
single most expensive step of a fresh ``make test`` (retrained on 2026-12-07: the LoRA base 239 s, the two Llama
bases 44 and 51 s, of about 1700 CPU-seconds for all populations; the two ViT bases, shipped since 2026-12-08,
16.0 and 12.6 s). The bases trained under the pinned numerics (:mod:`uws_core.linalg.numerics`) are therefore
shipped in ``uws_core/zoo/pretrained/<kind>_base_<key>/``: the very files the builder writes (config.json,
model.safetensors, ...) and the cache manifest ``complete.json`` (sha256 of each file, the builder's info).
A population build copies a shipped base when one exists for its key and trains it otherwise:

- the key is the cache digest of the fields that determine the base (:func:`uws_core.weights.cache.config_digest`:
  the fields, the format version, the numerics profile, the torch and transformers versions), so another
  config, ``UWS_NATIVE_KERNELS=1`` or another torch trains its own base;
- ``UWS_TRAIN_BASES=1`` trains every base even where one is shipped (:func:`train_requested`);
- ``python -m uws_core.zoo.retrain_bases --check`` (``make bases-check``) retrains every shipped base in a
  temporary cache and compares the files' sha256 with the shipped ones (``[match]``): the shipped files are what
  the code trains, bit for bit; ``--write`` (developers, after a change meant to change a base) trains them and
  replaces the shipped copies.

The tiny test presets have no shipped base: the unit tests keep training bases (tests/weights/test_fingerprints.py
builds them under two CPU capabilities; tests/zoo/test_pretrained.py builds a tiny population from a trained and
from a shipped base and compares the fingerprints).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from uws_core.weights.cache import build_cached, copy_entry, read_info, verify_cache_dir

__all__ = ["PRETRAINED_ROOT", "TRAIN_ENV", "train_requested", "shipped_base", "copy_shipped_base",
           "shipped_names", "shipped_or_trained"]

log = logging.getLogger("uws.pretrained")

#: where the shipped bases live (package data, see pyproject.toml)
PRETRAINED_ROOT = Path(__file__).with_name("pretrained")
#: ``UWS_TRAIN_BASES=1`` trains every base instead of copying a shipped one
TRAIN_ENV = "UWS_TRAIN_BASES"


def train_requested(environ=None) -> bool:
    """Whether the user asked to train every base (``UWS_TRAIN_BASES`` set to 1 / true / yes)."""
    environ = os.environ if environ is None else environ
    return environ.get(TRAIN_ENV, "").strip().lower() in {"1", "true", "yes"}


def shipped_names(root: Path | None = None) -> list[str]:
    """Names of the shipped bases (``lora_base_<key>``, ``llama_base_<key>``), sorted."""
    root = PRETRAINED_ROOT if root is None else Path(root)
    return sorted(p.name for p in root.glob("*_base_*") if p.is_dir()) if root.is_dir() else []


def shipped_base(name: str, format_version: int, root: Path | None = None) -> Path | None:
    """The shipped base directory ``name`` (``<kind>_base_<key>``), or None when none is shipped for this key or
    :func:`train_requested`. A shipped directory that fails its manifest (a file edited, added or missing) raises
    :class:`uws_core.weights.cache.CacheError` naming the directory and the file: a damaged checkout is never
    silently retrained into other bits, nor used."""
    if train_requested():
        return None
    src = (PRETRAINED_ROOT if root is None else Path(root)) / name
    if not src.is_dir():
        return None
    verify_cache_dir(src, format_version)
    return src


def copy_shipped_base(src: Path, dst: Path) -> dict:
    """Copy a shipped base ``src`` (verified by :func:`shipped_base`: exactly the files its manifest lists, no link)
    into the build directory ``dst``, the manifest left out (the cache writes its own); returns the builder's info
    recorded there, with ``"shipped": <src name>`` added."""
    copy_entry(src, dst)
    return {**read_info(src), "shipped": Path(src).name}


def shipped_or_trained(cache_root: Path, name: str, format_version: int, train: Callable[[Path], dict]) -> Path:
    """``<cache_root>/<name>``, a verified cache entry (:func:`uws_core.weights.cache.build_cached`) built by copying
    the shipped base ``name`` (:func:`shipped_base`) or, where none is shipped or ``UWS_TRAIN_BASES=1``, by
    ``train(tmp)``, which writes the base into ``tmp`` and returns its info (final loss, seconds)."""
    def build(tmp: Path) -> dict:
        shipped = shipped_base(name, format_version)
        return copy_shipped_base(shipped, tmp) if shipped is not None else train(tmp)

    return build_cached(Path(cache_root) / name, build, format_version)
