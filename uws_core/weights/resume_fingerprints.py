"""Per-model input fingerprints for resumable runs: a changed input is refused, never mixed with old results.

``uws spectra --resume`` skips keys already written in ``OUT/keys/``. Those results are only valid for the
inputs they were computed from, so ``run.json`` records, per model, every file the model is read from
(:func:`model_files`) with a fingerprint (:func:`file_fingerprint`):

* files up to :data:`CONTENT_HASH_MAX_BYTES`: size and sha256 of the whole content (a copy with a new
  mtime still matches; any changed byte does not);
* larger files (multi-GB shards): size, ``st_mtime_ns`` and sha256 of the safetensors header (the 8-byte
  length and the JSON header: names, dtypes, shapes and byte offsets of every tensor), so that a
  resume does not reread the data; an in-place rewrite changes the mtime.

On resume, :func:`compare_fingerprints` names the first model and file that differ, were added or removed;
the caller refuses the resume (``ResumeError``) so no run ever holds keys of two different inputs.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from uws_core.weights.file_checks import file_sha256

__all__ = ["CONTENT_HASH_MAX_BYTES", "file_fingerprint", "model_files", "population_fingerprints",
           "compare_fingerprints"]

CONTENT_HASH_MAX_BYTES = 64 << 20
_MAX_HEADER = 100 << 20  # safetensors' own limit on the header size


def _header_sha256(path: Path) -> str:
    """sha256 of a safetensors file's 8-byte header length and JSON header (no tensor data read)."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        body = f.read(min(n, _MAX_HEADER))
    return hashlib.sha256(head + body).hexdigest()


def file_fingerprint(path: Path | str) -> dict:
    """``{"size", "sha256"}`` for a file up to CONTENT_HASH_MAX_BYTES, else
    ``{"size", "mtime_ns", "header_sha256"}``."""
    path = Path(path)
    st = path.stat()
    if st.st_size <= CONTENT_HASH_MAX_BYTES:
        return {"size": st.st_size, "sha256": file_sha256(path)}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "header_sha256": _header_sha256(path)}


def model_files(population, i: int) -> list[Path]:
    """Every file model ``i`` of a population is read from: weights, index and config."""
    from uws_core.weights.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterSet
    from uws_core.weights.checkpoints import INDEX_FILE

    if isinstance(population, AdapterSet):
        d = population.dirs[i]
        return [d / CONFIG_FILE, d / WEIGHTS_FILE]
    if hasattr(population, "files") and hasattr(population, "ranks"):  # KohyaLoraSet
        return [population.files[i]]
    d = population.dirs[i]
    tensors = population._tensors[i] if hasattr(population, "_tensors") else population.cs._files[i]
    files = {v[0] for v in tensors.values()}
    files |= {p for p in (d / INDEX_FILE, d / "config.json") if p.is_file()}
    return sorted(files)


def population_fingerprints(population) -> dict[str, dict[str, dict]]:
    """``{model name: {file (relative to the model's directory, or its name): fingerprint}}``."""
    out = {}
    for i, name in enumerate(population.names):
        files = model_files(population, i)
        base = files[0].parent if len(files) == 1 else Path(population.dirs[i])
        out[name] = {(p.relative_to(base).as_posix() if base in p.parents else p.name): file_fingerprint(p)
                     for p in files}
    return out


def compare_fingerprints(old: dict, new: dict) -> str | None:
    """None if equal, else one sentence naming the first model and file that differ."""
    for name in new:
        if name not in old:
            return f"model {name!r} is new"
        for f, fp in new[name].items():
            if f not in old[name]:
                return f"model {name!r}: file {f} is new"
            if old[name][f] != fp:
                what = ", ".join(k for k in fp if old[name][f].get(k) != fp[k]) or "fingerprint"
                return f"model {name!r}: file {f} changed ({what} differ)"
        gone = sorted(set(old[name]) - set(new[name]))
        if gone:
            return f"model {name!r}: file {gone[0]} is gone"
    gone = sorted(set(old) - set(new))
    return f"model {gone[0]!r} is gone" if gone else None
