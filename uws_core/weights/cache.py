"""One on-disk cache for the populations our code trains (LoRA, ViT, Llama): build once, verify, reuse.

A population lives in a directory named by a digest of everything that determines its weights (the
config, a format version, the torch and transformers versions). It is built in a temporary directory
beside its final place, then a manifest ``complete.json`` (sha256 of every file, the format version and
an info dict from the builder) is written last and the directory is renamed into place. A directory
without the manifest, or with a file missing or changed, is never used: it is deleted and rebuilt with a
logged warning. Two processes building the same population both finish; the first rename wins.

Layout::

    <cache root>/<kind>/<digest>/complete.json   {"format": int, "files": {relpath: sha256}, "info": {...}}

The cache root is ``$UWS_CACHE`` or ``<repo>/.cache/uws``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from uws_core.weights import safe_paths
from uws_core.weights.file_checks import file_sha256

__all__ = ["CacheError", "default_cache_dir", "config_digest", "write_manifest",
           "verify_cache_dir", "read_info", "build_cached", "copy_entry"]

log = logging.getLogger(__name__)
MANIFEST = "complete.json"


class CacheError(FileNotFoundError):
    """A cached directory is missing files or does not match its manifest."""


def default_cache_dir() -> Path:
    """``$UWS_CACHE`` or ``<repo>/.cache/uws``. A relative ``UWS_CACHE`` is taken from the repository root, not from
    the working directory, so that a notebook kernel (which runs in ``notebooks/``) and ``make populations`` find
    the same populations."""
    repo = Path(__file__).resolve().parents[2]
    env = os.environ.get("UWS_CACHE", "").strip()
    return repo / ".cache" / "uws" if not env else Path(env) if Path(env).is_absolute() else repo / env


def config_digest(config: dict, format_version: int) -> str:
    """12 hex digits of sha256 over the config, the format version, the torch / transformers versions and
    the numerical environment (:func:`uws_core.linalg.numerics.profile`).

    A new initialiser or kernel in another torch, or other CPU kernels, give other weights, so they get
    another directory.
    """
    import torch
    import transformers

    from uws_core.linalg.numerics import profile

    blob = json.dumps({"format": format_version, "torch": torch.__version__, "numerics": profile(),
                       "transformers": transformers.__version__, **config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def write_manifest(root: Path, format_version: int, info: dict | None = None) -> None:
    """Write ``root/complete.json``: sha256 of every file under ``root`` (the manifest itself excluded)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"format": format_version, "files": {p.relative_to(root).as_posix(): file_sha256(p) for p in files},
                "info": info or {}}
    if not manifest["files"]:
        raise CacheError(f"{root}: the build wrote no file; an empty cache entry is never recorded")
    safe_paths.write_text_atomic(root / MANIFEST, json.dumps(manifest, indent=1, default=str))


def read_json_mapping(path: Path | str, field: str, error: type[Exception] = ValueError, what: str = "file") -> dict:
    """The JSON object in ``path`` whose ``field`` is a mapping; else ``error`` naming the file and the cause."""
    try:
        data = json.loads(Path(path).read_text())
        data[field].items()
    except (ValueError, KeyError, AttributeError, TypeError) as err:
        raise error(f"{path}: unreadable {what} ({err!r})") from None
    return data


def _read_manifest(root: Path) -> dict:
    marker = Path(root) / MANIFEST
    if not marker.is_file():
        raise CacheError(f"{root}: no {MANIFEST} (missing or partially written)")
    return read_json_mapping(marker, "files", CacheError, "manifest")


def verify_cache_dir(root: Path | str, format_version: int | None = None) -> None:
    """Raise :class:`CacheError` unless ``root/complete.json`` exists, has ``format_version`` (if given),
    lists at least one file, and the directory holds exactly the files it lists (none added, none missing,
    no symbolic link), each with its sha256."""
    root = Path(root)
    manifest = _read_manifest(root)
    if format_version is not None and manifest.get("format") != format_version:
        raise CacheError(f"{root}: format {manifest.get('format')!r} in {MANIFEST}, expected {format_version}")
    listed = manifest["files"]
    if not listed:
        raise CacheError(f"{root}: {MANIFEST} lists no file (an emptied manifest is never trusted)")
    links = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_symlink())
    if links:
        raise CacheError(f"{root}: symbolic link {links[0]} in a cache entry (never followed)")
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST}
    extra = sorted(present - set(listed))
    if extra:
        raise CacheError(f"{root}: file {extra[0]} is not listed in {MANIFEST} ({len(extra)} unlisted)")
    for rel, digest in listed.items():
        try:
            p = safe_paths.contained(root, rel, str(root))
        except safe_paths.UnsafePathError as exc:
            raise CacheError(f"{root}: {MANIFEST} lists an unsafe path: {exc}") from None
        if not p.is_file():
            raise CacheError(f"{root}: missing file {rel}")
        if file_sha256(p) != digest:
            raise CacheError(f"{root}: file {rel} does not match its sha256 in {MANIFEST}")


def read_info(root: Path | str) -> dict:
    """The info dict the builder returned (``{}`` for manifests written without one)."""
    return dict(_read_manifest(Path(root)).get("info") or {})


def build_cached(final: Path | str, build: Callable[[Path], dict | None], format_version: int) -> Path:
    """Return ``final`` holding a verified complete build, running ``build(tmp_dir)`` only when needed.

    ``build`` writes every file into the empty directory it is given and may return an info dict (kept in
    the manifest, see :func:`read_info`). A corrupt or partial ``final`` is deleted and rebuilt with a
    logged warning; an exception in ``build`` leaves nothing behind.
    """
    final = Path(final)
    if final.exists():
        try:
            verify_cache_dir(final, format_version)
            log.info("using cached %s", final)
            return final
        except CacheError as err:
            log.warning("rebuilding cache: %s", err)
            shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        info = build(tmp)
        write_manifest(tmp, format_version, info)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep its copy if it is sound
            verify_cache_dir(final, format_version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s", final)
    return final


def copy_entry(src: Path | str, dst: Path | str) -> Path:
    """Copy the files of a cache entry ``src`` (as :func:`build_cached` returns it: verified against its manifest,
    no symbolic link) into ``dst``, the manifest left out: a pretrained base copied into a population, or a shipped
    base into the cache, which writes its own manifest. ``dst`` may exist (empty build directory); returns it."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(MANIFEST), dirs_exist_ok=True)
    return Path(dst)
