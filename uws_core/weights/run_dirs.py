"""Run directories of the per-key spectra drivers (``uws spectra``): settings, resume, atomic writes, the key loop.

A run directory holds ``run.json`` (the settings), ``keys/<key>.json`` (one file per finished key, written
atomically), optionally ``basis/<key>.safetensors``, and ``spectra.json`` (every key, written at the end).
:func:`drive_keys` is the one loop over keys that both population kinds use: transformers checkpoints and
PEFT adapters (:mod:`uws_core.weights.population_spectra`) and kohya LoRAs with ranks that differ
(:mod:`uws_core.weights.kohya`); each passes the function that computes one key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

__all__ = ["FORMAT", "FORMAT_VERSION", "ResumeError", "summarize", "key_filename", "write_json_atomic",
           "prepare_out", "select_keys", "drive_keys"]

FORMAT = "uws-population-spectra"
FORMAT_VERSION = 1


class ResumeError(ValueError):
    """An output directory that holds another run (other settings), or a run continued without ``resume``."""


def summarize(spec, ks=(1, 4, 16, 32, 64), thresholds=(0.5, 0.8, 0.9, 0.95, 0.99), evr_head: int = 512) -> dict:
    """JSON-able spectrum: EVR head, k at each threshold and top-k EVR (both from the full EVR)."""
    evr = spec.evr()
    return {"unfolding": spec.unfolding, "center": spec.center, "N": int(spec.n_models),
            "shape": [int(s) for s in spec.matrix_shape], "n_components": int(len(evr)),
            "total_variance": float(spec.total_variance), "evr": [float(v) for v in evr[:evr_head]],
            "k_at": {str(t): int(spec.k_at(t)) for t in thresholds},
            "top_evr": {str(k): float(spec.top_evr(k)) for k in ks}}


def key_filename(key: str) -> str:
    """A file name for a key: the key itself when it is safe, else a cleaned form plus a short hash."""
    if re.fullmatch(r"[A-Za-z0-9_.\-]+", key) and len(key) < 200 and key not in (".", ".."):
        return key
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", key)[:150] + "." + hashlib.sha1(key.encode()).hexdigest()[:8]


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` through a unique temporary file in the same directory (mkstemp: no fixed name a
    planted symlink could redirect, no collision between concurrent writers), then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=1))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_out(out: Path, settings: dict, resume: bool) -> None:
    """Create ``out`` for a run with these settings, or check that the run there has the same settings."""
    run = out / "run.json"
    if run.is_file():
        if not resume:
            raise ResumeError(f"{out} already holds a run ({run}); pass resume=True (--resume) to continue it, "
                              "or choose another directory")
        old = json.loads(run.read_text())
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            raise ResumeError(f"{run} was written with other settings ({', '.join(diff)}: "
                              f"{old.get(diff[0])!r} there, {settings[diff[0]]!r} now); use another directory")
    (out / "keys").mkdir(parents=True, exist_ok=True)
    if settings.get("basis_k"):
        (out / "basis").mkdir(exist_ok=True)
    write_json_atomic(run, settings)


def select_keys(all_keys: Sequence[str], keys: Sequence[str] | str | None, what: str) -> list[str]:
    """``keys`` as a list: all of ``all_keys`` (None), those matching a regex (str), or the given ones (checked)."""
    if isinstance(keys, str):
        pattern = re.compile(keys)
        keys = [k for k in all_keys if pattern.search(k)]
    keys = list(all_keys if keys is None else keys)
    known = set(all_keys)
    unknown = [k for k in keys if k not in known]
    if unknown or not keys:
        raise KeyError(f"{unknown[0]!r} is not a key of {what}" if unknown else "no key selected")
    return keys


def drive_keys(out: Path, settings: dict, keys: Sequence[str], compute_key: Callable[[str], dict],
               n_models: int, device, desc: str, on_key_done: Callable[[str, dict], None] | None = None,
               progress: bool = True) -> dict:
    """The per-key loop: skip keys already in ``out/keys`` (resume), compute the others one at a time, write each
    when done; a result holding ``"too_big"`` (its memory bound) is reported, not written. Writes and returns
    ``spectra.json`` (settings, ``computed``, ``resumed``, ``too_big`` and every key's result)."""
    results, computed, skipped, too_big = {}, [], [], {}
    bar = tqdm(keys, desc=desc, disable=not progress or None)
    for key in bar:
        path = out / "keys" / (key_filename(key) + ".json")
        if path.is_file():
            results[key] = json.loads(path.read_text())
            skipped.append(key)
            continue
        bar.set_postfix_str(key[-40:])
        res = compute_key(key)
        if "too_big" in res:
            too_big[key] = res["too_big"]
            continue
        write_json_atomic(path, res)
        results[key] = res
        computed.append(key)
        if on_key_done is not None:
            on_key_done(key, res)
    summary = {**settings, "n_models": n_models, "device": str(device), "computed": computed,
               "resumed": skipped, "too_big": too_big, "keys": results}
    write_json_atomic(out / "spectra.json", summary)
    return summary
