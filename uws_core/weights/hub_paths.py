"""Where ``uws download`` puts an entry's files, each path checked before anything is touched (split from
:mod:`uws_core.weights.hub`).

Every path one entry may write, move or delete (``dest/owner/name/<file>``, its copy in the staging and the
rejected directories beside ``dest``) is made by :func:`entry_paths` with the containment rule of
:mod:`uws_core.weights.safe_paths`; :func:`unpublish` moves only those listed files.
"""

from __future__ import annotations

import logging
import os
import shutil
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from uws_core.weights import safe_paths

log = logging.getLogger(__name__)

STAMP_FILE = ".uws-verified.json"  # per downloaded repository: file -> size, mtime, verified checksum

__all__ = ["FileOutcome", "DownloadReport", "read_stamp", "write_stamp", "stamp_of", "STAMP_FILE", "EntryPaths", "entry_paths", "check_entry_file_name", "free_bytes", "move_file", "side_dirs", "unpublish"]


def move_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)  # atomic on one filesystem
    except OSError:
        shutil.move(str(src), str(dst))


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def side_dirs(dest: Path) -> tuple[Path, Path]:
    """(staging, rejected) directories beside ``dest``: outside it, so loaders never see their files."""
    dest = Path(dest).resolve()
    return dest.parent / f".{dest.name}.staging", dest.parent / f".{dest.name}.rejected"


@dataclass
class EntryPaths:
    """Where one entry's files live: each path checked by :func:`uws_core.weights.safe_paths.contained`."""

    repo_dir: Path
    stage_dir: Path
    target: dict  # file name -> dest/owner/name/<file>
    stage: dict  # file name -> staging/owner/name/<file>
    rejected: dict  # file name -> rejected/owner/name/<file>


def check_entry_file_name(name: str, where: str) -> str:
    """A file name of an entry: a safe relative path (:func:`uws_core.weights.safe_paths.check_relative_name`)
    that is not one of the names this module or huggingface_hub write beside the files (the verification stamp,
    and the client's ``.cache/`` download metadata in staging)."""
    safe_paths.check_relative_name(name, where)
    if name == STAMP_FILE or name.split("/")[0] == ".cache":
        raise safe_paths.UnsafePathError(f"{where}: file name {name!r} is reserved (verification stamp or the hub "
                                         "client's download metadata)")
    return name


def entry_paths(repo_id: str, sums, dest: Path, staging: Path, rejected: Path) -> EntryPaths:
    """Every path one entry may write, move or delete, checked before anything is touched: the id by
    huggingface_hub's validator, each name as a relative path, no symlink on the way, all inside their root."""
    where = f"repository {repo_id!r}"
    safe_paths.check_repo_id(repo_id, where)
    for c in sums:
        check_entry_file_name(c.name, where)
    for root in (staging, rejected):
        if root.is_symlink():
            raise safe_paths.UnsafePathError(f"{where}: {root} is a symbolic link; refused")
    repo_dir = safe_paths.contained(dest, repo_id, where)
    stage_dir = safe_paths.contained(staging, repo_id, where)
    return EntryPaths(repo_dir, stage_dir,
                       {c.name: safe_paths.contained(repo_dir, c.name, where) for c in sums},
                       {c.name: safe_paths.contained(stage_dir, c.name, where) for c in sums},
                       {c.name: safe_paths.contained(safe_paths.contained(rejected, repo_id, where), c.name, where)
                        for c in sums})


def unpublish(paths: EntryPaths) -> None:
    """Move a failed entry's own listed files (and nothing else) from ``dest`` back to staging, so loaders
    never see a partial model and a rerun reuses them. Other files (a user's own) stay where they are; the
    entry directory is removed only when it is left empty. Every path was checked by :func:`entry_paths`."""
    for name, p in paths.target.items():
        if p.is_file() and not p.is_symlink():
            move_file(p, paths.stage[name])
    (paths.repo_dir / STAMP_FILE).unlink(missing_ok=True)
    for d in sorted({p.parent for p in paths.target.values()}, key=lambda q: len(q.parts), reverse=True):
        while (d == paths.repo_dir or paths.repo_dir in d.parents) and d.is_dir() and not d.is_symlink() \
                and not any(d.iterdir()):
            d.rmdir()
            if d == paths.repo_dir:
                break
            d = d.parent
    if paths.repo_dir.is_dir() and any(paths.repo_dir.iterdir()):
        log.warning("%s: incomplete entry's files moved to staging; other files left in place: %s",
                    paths.repo_dir, sorted(p.name for p in paths.repo_dir.iterdir())[:5])


# ------------------------------------------------------------------------------------------ what a run reports
@dataclass
class FileOutcome:
    repo_id: str
    file: str
    status: str  # present | downloaded | staged | refused | missing_offline | error
    detail: str = ""
    path: str = ""


@dataclass
class DownloadReport:
    family: str
    dest: str
    offline: bool
    files: list[FileOutcome] = field(default_factory=list)
    entries: dict[str, str] = field(default_factory=dict)  # repo_id -> ok | refused | unlocked | ...

    def count(self, status: str) -> int:
        return sum(f.status == status for f in self.files)

    @property
    def ok(self) -> bool:
        return all(v == "ok" for v in self.entries.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "counts": {s: self.count(s) for s in
                                           ("present", "downloaded", "staged", "refused", "missing_offline",
                                            "error")}}


def read_stamp(repo_dir: Path) -> dict:
    try:
        return json.loads((repo_dir / STAMP_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_stamp(repo_dir: Path, stamp: dict) -> None:
    safe_paths.write_text_atomic(repo_dir / STAMP_FILE, json.dumps(stamp, indent=1))


def stamp_of(path: Path, want) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "checksum": str(want)}
