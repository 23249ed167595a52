"""Checks of one file on disk against what was pinned: its size and checksum (the hub's LFS ``sha256`` or git
blob ``sha1``), and the tensor shapes of a safetensors file. Used by the verified hub download
(:mod:`uws_core.weights.hub`) and by the population cache (:mod:`uws_core.weights.cache`, sha256 of every file).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from uws_core.weights.checkpoints import WeightFormatError, read_safetensors_header

if TYPE_CHECKING:
    from uws_core.weights.manifests import FileChecksum

__all__ = ["file_sha256", "git_blob_sha1", "checksum_problem", "shape_problems"]

_BUF = 1 << 22  # bytes read at a time


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (what the hub stores as ``lfs.sha256``)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_BUF):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """git's blob id of a file: sha1 of ``b"blob <size>\\0" + bytes`` (the hub's ``blob_id``)."""
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(_BUF):
            h.update(chunk)
    return h.hexdigest()


def checksum_problem(path: Path, want: FileChecksum) -> str | None:
    """None if ``path`` has the pinned size and checksum, else what differs."""
    size = path.stat().st_size
    if size != want.size:
        return f"size {size} bytes, pinned {want.size}"
    got = file_sha256(path) if want.algo == "sha256" else git_blob_sha1(path)
    if got != want.hex:
        return f"{want.algo} {got}, pinned {want.hex}"
    return None


def shape_problems(path: Path, expected: dict[str, tuple[int, ...]]) -> list[str]:
    """Tensors of a safetensors file whose shape differs from ``expected`` (key suffix -> shape)."""
    if not expected or not path.name.endswith(".safetensors"):
        return []
    try:
        header = read_safetensors_header(path)
    except WeightFormatError as exc:
        return [str(exc)]
    bad = []
    for key, (shape, _) in header.items():
        for suffix, want in expected.items():
            if (key == suffix or key.endswith("." + suffix)) and tuple(shape) != want:
                bad.append(f"{key} has shape {tuple(shape)}, expected {want}")
    return bad
