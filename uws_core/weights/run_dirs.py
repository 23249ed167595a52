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
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from uws_core.linalg.numerics import progress_disabled
from uws_core.weights import safe_paths

__all__ = ["FORMAT", "FORMAT_VERSION", "ResumeError", "summarize", "key_filename", "write_json_atomic",
           "prepare_out", "read_key_result", "select_keys", "drive_keys"]

log = logging.getLogger(__name__)

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
    planted symlink could redirect, no collision between concurrent writers), then rename it into place
    (:func:`uws_core.weights.safe_paths.write_text_atomic`)."""
    safe_paths.write_text_atomic(path, json.dumps(obj, indent=1))


def prepare_out(out: Path, settings: dict, resume: bool, population=None) -> None:
    """Create or check ``out/run.json``: the settings and, per model, the fingerprints of its input files
    (:mod:`uws_core.weights.resume_fingerprints`). A resume with other settings, or after any input file changed, was
    added or removed, is refused (a run never holds keys of two inputs); so is a fresh run into a directory
    that already holds key results without a ``run.json``."""
    from uws_core.weights.resume_fingerprints import compare_fingerprints, population_fingerprints

    run = out / "run.json"
    for sub in ("keys", "basis"):
        if (out / sub).is_symlink():
            raise ResumeError(f"{out / sub} is a symbolic link; results are only written inside {out}")
    prints = population_fingerprints(population) if population is not None else None
    if run.is_file():
        if not resume:
            raise ResumeError(f"{out} already holds a run ({run}); pass resume=True (--resume) to continue it, "
                              "or choose another directory")
        try:
            old = json.loads(run.read_text())
            old.items()
        except (ValueError, AttributeError) as exc:
            raise ResumeError(f"{run} is damaged ({exc}); cannot tell what the written keys were computed from: "
                              "use another directory") from None
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            raise ResumeError(f"{run} was written with other settings ({', '.join(diff)}: "
                              f"{old.get(diff[0])!r} there, {settings[diff[0]]!r} now); use another directory")
        if prints is not None:
            if "fingerprints" not in old:
                raise ResumeError(f"{run} records no input fingerprints (written by an older version): the keys "
                                  "there cannot be checked against the inputs; use another directory")
            changed = compare_fingerprints(old["fingerprints"], prints)
            if changed:
                raise ResumeError(f"{run}: the inputs changed since the keys there were computed ({changed}); "
                                  "resuming would mix old and new results: use another directory")
    elif (out / "keys").is_dir() and any((out / "keys").iterdir()):
        raise ResumeError(f"{out / 'keys'} holds key results but {run} is missing: they cannot be checked; "
                          "use another directory")
    (out / "keys").mkdir(parents=True, exist_ok=True)
    if settings.get("basis_k"):
        (out / "basis").mkdir(exist_ok=True)
    write_json_atomic(run, settings if prints is None else {**settings, "fingerprints": prints})


def read_key_result(path: Path, key: str) -> dict | None:
    """A key's result written by an earlier run, or None (logged) when the file is damaged: recomputed."""
    try:
        res = json.loads(path.read_text())
        if isinstance(res, dict) and res.get("key") == key and "spectra" in res:
            return res
        problem = "not this key's result"
    except (OSError, ValueError) as exc:
        problem = str(exc)
    log.warning("resume: %s for key %r is damaged (%s): recomputing the key", path, key, problem)
    path.unlink(missing_ok=True)
    return None


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
               progress: bool = True, finish: Callable[[dict], dict] | None = None) -> dict:
    """The per-key loop: skip keys already in ``out/keys`` (resume), compute the others one at a time, write each
    when done; a result holding ``"too_big"`` (its memory bound) is reported, not written. Writes and returns
    ``spectra.json`` (settings, ``computed``, ``resumed``, ``too_big`` and every key's result), after ``finish``
    (a recipe's summary step) when given."""
    results, computed, skipped, too_big = {}, [], [], {}
    bar = tqdm(keys, desc=desc, disable=progress_disabled(progress))
    for key in bar:
        path = out / "keys" / (key_filename(key) + ".json")
        if path.is_file() and (old := read_key_result(path, key)) is not None:
            results[key] = old
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
    if finish is not None:
        summary = finish(summary)
    write_json_atomic(out / "spectra.json", summary)
    return summary
