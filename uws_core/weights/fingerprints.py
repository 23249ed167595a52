"""Content fingerprints of the laptop populations, and the committed ones they are checked against.

A fingerprint is the sha256 over every tensor of every ``*.safetensors`` file under a population's
directory, in a fixed order: files by relative POSIX path, keys sorted inside a file, and for each tensor
its path, key, dtype, shape and raw little-endian bytes. It names the weights only (records, JSON and
timings are left out), so two builds have the same fingerprint exactly when every weight is bitwise equal.

The committed fingerprints live in ``data_manifests/population_fingerprints.json``, per population name
(``lora/seed0``, ``vit/seed1``, ``tiny/llama`` ...) with the numerical profile they were made under
(:func:`uws_core.linalg.numerics.profile`); ``make populations`` prints each fingerprint beside the committed
one, and ``tests/test_fingerprints.py`` rebuilds the tiny populations under other CPU settings and
compares.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from uws_core.weights.cache import read_json_mapping

__all__ = ["population_fingerprint", "COMMITTED", "committed_fingerprints", "compare_with_committed",
           "record_fingerprints"]

COMMITTED = Path(__file__).resolve().parents[2] / "data_manifests" / "population_fingerprints.json"


def population_fingerprint(root: Path | str) -> str:
    """sha256 (hex) over the tensors of every ``*.safetensors`` file under ``root`` (order above).

    Raises FileNotFoundError when ``root`` holds no safetensors file (an empty population has no
    fingerprint), and names the file when one cannot be read."""
    from safetensors import safe_open

    root = Path(root)
    files = sorted(root.rglob("*.safetensors"), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise FileNotFoundError(f"{root}: no *.safetensors file to fingerprint")
    h = hashlib.sha256()
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            with safe_open(str(path), framework="numpy") as f:
                for key in sorted(f.keys()):
                    arr = np.ascontiguousarray(f.get_tensor(key))
                    head = f"{rel}\0{key}\0{arr.dtype.str}\0{tuple(arr.shape)}\0"
                    h.update(head.encode())
                    h.update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{path}: cannot fingerprint ({err})") from None
    return h.hexdigest()


def committed_fingerprints(path: Path | str = COMMITTED) -> dict:
    """``{"profile": ..., "torch": ..., "populations": {name: {"sha256": ..., "key": ...}}}`` ({} if absent)."""
    path = Path(path)
    if not path.is_file():
        return {}
    return read_json_mapping(path, "populations", ValueError, "fingerprint file")


def compare_with_committed(name: str, sha256: str, profile: str, path: Path | str = COMMITTED) -> str:
    """One word on how ``sha256`` of population ``name`` compares with the committed one:
    ``match``, ``DIFFERS`` (same profile, other bits: the pin did not hold or the code changed),
    ``other-profile`` (committed under another numerical environment: differences are expected) or
    ``not-committed``."""
    data = committed_fingerprints(path)
    entry = data.get("populations", {}).get(name)
    if entry is None:
        return "not-committed"
    if entry["sha256"] == sha256:
        return "match"
    return "DIFFERS" if data.get("profile") == profile else "other-profile"


def record_fingerprints(entries: dict[str, dict], profile: str, path: Path | str = COMMITTED) -> Path:
    """Write (merge) ``{name: {"sha256": ..., "key": ...}}`` into the committed file under ``profile``.

    Refuses to mix profiles: fingerprints made under another numerical environment are not comparable."""
    import torch

    path = Path(path)
    data = committed_fingerprints(path) or {"profile": profile, "torch": torch.__version__, "populations": {}}
    if data.get("profile") != profile:
        raise ValueError(f"{path}: holds fingerprints of profile {data.get('profile')!r}, not {profile!r}; "
                         "record under the pinned profile (see uws_core.linalg.numerics)")
    data["populations"].update(entries)
    data["populations"] = dict(sorted(data["populations"].items()))
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path
