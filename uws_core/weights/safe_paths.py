"""One containment rule for every write, move and delete under a destination, cache or results directory.

Names that come from outside (a manifest's ``repo_id``, a file name from the hub's listing or a manifest's
``checksums`` cell, a weight map's shard name) are checked before they are joined to a root:

* repository ids with huggingface_hub's own validator (``huggingface_hub.utils.validate_repo_id``: ASCII
  ``[A-Za-z0-9._-]``, no ``--`` or ``..``, at most one ``/``), and an owner is required (``owner/name``);
* file names (:func:`check_relative_name`): relative POSIX paths only, no empty, ``.`` or ``..`` component, no
  backslash, no drive letter, no NUL or control character;
* the joined path (:func:`contained`) must resolve inside the root, and no existing component between the root
  and the path may be a symbolic link (a planted link is refused, never followed out of the root).

Atomic writes (:func:`write_bytes_atomic`, :func:`write_text_atomic`) use a unique temporary file made by
``tempfile.mkstemp`` in the target's directory (created ``O_EXCL``, so a planted symlink at a temporary name
is never followed and two concurrent writers never share one), then ``os.replace``, which replaces a
symlink at the target itself instead of writing through it.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path, PurePosixPath

__all__ = ["UnsafePathError", "check_repo_id", "check_relative_name", "contained", "write_bytes_atomic",
           "write_text_atomic"]

_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class UnsafePathError(ValueError):
    """A repository id, file name or path that would leave its root (or follow a link out of it)."""


def check_repo_id(repo_id, where: str = "") -> str:
    """``repo_id`` if it is a valid hub id (huggingface_hub's validator), else UnsafePathError: ``owner/name``, or a
    bare ``name`` as the hub still serves legacy repositories (``gpt2``; some of the paper's ViT list)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    pre = f"{where}: " if where else ""
    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise UnsafePathError(f"{pre}repo_id {repo_id!r} is not of the form owner/name or name")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UnsafePathError(f"{pre}repo_id {repo_id!r} is refused: {exc}") from None
    return repo_id


def check_relative_name(name, where: str = "") -> str:
    """``name`` if it is a safe relative POSIX path (no absolute path, ``..``, ``.``, backslash, drive, control
    character or empty component), else UnsafePathError naming it."""
    pre = f"{where}: " if where else ""
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{pre}file name {name!r} is empty or not a string")
    if "\\" in name or _DRIVE_RE.match(name) or _CONTROL_RE.search(name):
        raise UnsafePathError(f"{pre}file name {name!r} holds a backslash, a drive letter or a control character")
    if name.startswith("/"):
        raise UnsafePathError(f"{pre}file name {name!r} is an absolute path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"{pre}file name {name!r} has an empty, '.' or '..' component")
    return name


def contained(root: Path | str, rel: str, where: str = "", allow_missing_root: bool = True) -> Path:
    """``root / rel`` after checking ``rel`` (:func:`check_relative_name`), that no existing component from
    ``root`` down to the result is a symbolic link, and that the result resolves inside ``root``."""
    pre = f"{where}: " if where else ""
    check_relative_name(rel, where)
    root = Path(root)
    if root.is_symlink():
        raise UnsafePathError(f"{pre}{root} is a symbolic link; refused (never followed)")
    if not allow_missing_root and not root.is_dir():
        raise UnsafePathError(f"{pre}{root} is not a directory")
    p = root
    for part in PurePosixPath(rel).parts:
        p = p / part
        if p.is_symlink():
            raise UnsafePathError(f"{pre}{p} is a symbolic link; refused (never followed out of {root})")
    base = root.resolve()
    target = p.resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"{pre}{rel!r} resolves to {target}, outside {base}")
    return p


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a unique mkstemp file beside it, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path | str, text: str) -> Path:
    """:func:`write_bytes_atomic` of UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))
