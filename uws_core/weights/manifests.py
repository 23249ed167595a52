"""Paper-scale model lists (``data_manifests/*.csv``): validation, pinning, and where checkpoints lie on disk.

One CSV per model family, copied from the authors' code and the independent replication (see
``data_manifests/README.md``). Besides the columns of the public lists, every manifest carries the
columns that pin a download (``HUB_COLUMNS``):

``revision``
    the commit sha (40 hex digits) the entry is pinned to; empty until ``uws manifest lock`` ran;
``files``
    ``;``-separated patterns of the files to fetch (``fnmatch``; a pattern without ``/`` matches only
    top-level files); pickles and ``original/*`` are never fetched, whatever the pattern;
``checksums``
    written by the lock step: ``;``-separated ``name=sha256:<hex>@<size>`` for files the hub stores in
    LFS (their sha256 is the hub's ``lfs.sha256``) and ``name=git-sha1:<hex>@<size>`` for small files
    stored in git (their git blob id); empty until locked;
``expected_shapes``
    ``;``-separated ``suffix=AxB`` (a tensor whose key ends with ``.suffix`` must have that shape), or
    empty where the shapes are not known from the public material;
``hub_status``
    ``unlocked``, ``locked``, ``unresolved`` (no hub id: the public list omits the owner; never
    guessed), ``no_hub_checkpoint`` (trained by the authors, nothing public) or ``lock_failed``;
``hub_note``
    why an entry is unresolved or could not be locked.

A manifest may add ``repo_type`` (``model``, the default, or ``dataset``): the task datasets of
``lots_of_loras_tasks.csv`` are dataset repositories (``huggingface_hub``'s ``repo_type="dataset"``).

``load_manifest`` validates every column and raises ``ManifestError`` naming the file, the row and the
column of the first problem. ``local_dir(s)`` map entries to a local download directory.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from uws_core.weights import safe_paths

MANIFEST_DIR = Path(__file__).resolve().parents[2] / "data_manifests"

# family -> (file, expected rows, required columns of the public list); counts are those of the public lists.
FAMILIES: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "mistral7b_loras": ("mistral7b_loras.csv", 502, ("repo_id", "task_id", "task_name", "split", "lora_rank")),
    "vit": ("vit.csv", 470, ("list_index", "repo_id", "owner_missing")),
    "llama8b": ("llama8b.csv", 622, ("list_index", "repo_id", "used_in_50_model_analysis")),
    "gpt2": ("gpt2.csv", 200, ("list_index", "repo_id")),
    "flan_t5": ("flan_t5.csv", 196, ("list_index", "repo_id", "task_slug")),
    "sdxl_style_loras": ("sdxl_style_loras.csv", 267, ("list_index", "repo_id")),
    "resnet50_datasets": ("resnet50_datasets.csv", 15, ("package", "dataset", "repo_id")),
    "lots_of_loras_tasks": ("lots_of_loras_tasks.csv", 502, ("repo_id", "repo_type", "task_id", "task_name", "split",
                                                             "adapter_repo_id")),
}
REPO_TYPES = ("model", "dataset")
#: Files that count as a dataset's data (a dataset entry must match one, as a model entry must match safetensors).
DATA_SUFFIXES = (".parquet", ".json", ".jsonl", ".csv", ".arrow")
HUB_COLUMNS = ("revision", "files", "checksums", "expected_shapes", "hub_status", "hub_note")
HUB_STATUSES = ("unlocked", "locked", "unresolved", "no_hub_checkpoint", "lock_failed")
# Never fetched: pickles (unpickling runs code) and the original/ consolidated checkpoints of Llama repos.
FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
FORBIDDEN_PREFIXES = ("original/",)

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_CHECKSUM_RE = re.compile(r"^(?P<name>[^=;@]+)=(?P<algo>sha256|git-sha1):(?P<hex>[0-9a-f]+)@(?P<size>\d+)$")
_SHAPE_RE = re.compile(r"^(?P<suffix>[A-Za-z0-9_.]+)=(?P<shape>\d+(?:x\d+)*)$")
_HEX_LEN = {"sha256": 64, "git-sha1": 40}


class ManifestError(ValueError):
    """A manifest file or a local checkout that does not match it."""


@dataclass(frozen=True)
class FileChecksum:
    """One pinned file: its name in the repository, the hub's checksum and its size in bytes."""

    name: str
    algo: str  # "sha256" (LFS files) or "git-sha1" (git blob id of small files)
    hex: str
    size: int

    def __str__(self) -> str:
        return f"{self.name}={self.algo}:{self.hex}@{self.size}"


def is_forbidden_file(name: str) -> bool:
    """True for files that are never fetched: pickles and ``original/*``."""
    return name.lower().endswith(FORBIDDEN_SUFFIXES) or name.startswith(FORBIDDEN_PREFIXES)


def split_cell(cell: str) -> list[str]:
    """``"a;b;"`` -> ``["a", "b"]``."""
    return [p.strip() for p in str(cell).split(";") if p.strip()]


def parse_checksums(cell: str) -> list[FileChecksum]:
    """Parse a ``checksums`` cell; raises ValueError naming the bad entry."""
    out = []
    for part in split_cell(cell):
        m = _CHECKSUM_RE.match(part)
        if not m or len(m.group("hex")) != _HEX_LEN[m.group("algo")]:
            raise ValueError(f"bad checksum entry {part!r} (want name=sha256:<64 hex>@size or "
                             "name=git-sha1:<40 hex>@size)")
        out.append(FileChecksum(m.group("name"), m.group("algo"), m.group("hex"), int(m.group("size"))))
    if len({c.name for c in out}) != len(out):
        raise ValueError("a file is listed twice")
    return out


def format_checksums(checksums) -> str:
    return ";".join(str(c) for c in checksums)


def parse_expected_shapes(cell: str) -> dict[str, tuple[int, ...]]:
    """Parse an ``expected_shapes`` cell into ``{key suffix: shape}``; raises ValueError on a bad entry."""
    out = {}
    for part in split_cell(cell):
        m = _SHAPE_RE.match(part)
        if not m:
            raise ValueError(f"bad shape entry {part!r} (want key_suffix=AxB)")
        out[m.group("suffix")] = tuple(int(s) for s in m.group("shape").split("x"))
    return out


def match_files(names, patterns) -> list[str]:
    """Repository files matching any pattern, never pickles or ``original/*``, in the listing's order."""
    pats = split_cell(patterns) if isinstance(patterns, str) else list(patterns)
    keep = []
    for name in names:
        if is_forbidden_file(name):
            continue
        if any(fnmatch.fnmatchcase(name, p) and ("/" in p or "/" not in name) for p in pats):
            keep.append(name)
    return keep


def locked_bytes(manifest: pd.DataFrame) -> tuple[int, int]:
    """(bytes of all pinned files, number of locked entries): the exact download size once locked."""
    locked = manifest[manifest["hub_status"] == "locked"]
    return sum(c.size for cell in locked["checksums"] for c in parse_checksums(cell)), len(locked)


def manifest_path(family: str, manifest_dir: Path | str | None = None) -> Path:
    if family not in FAMILIES:
        raise ManifestError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    return Path(manifest_dir or MANIFEST_DIR) / FAMILIES[family][0]


def resolve_manifest(spec: str | Path) -> tuple[str, Path]:
    """A family name (``gpt2``) or a manifest path (``data_manifests/gpt2.csv``) -> (family, directory)."""
    s = str(spec)
    if s in FAMILIES:
        return s, MANIFEST_DIR
    p = Path(s)
    by_file = {v[0]: k for k, v in FAMILIES.items()}
    if p.name not in by_file:
        raise ManifestError(f"{s!r} is neither a model family ({sorted(FAMILIES)}) nor a manifest file named "
                            f"like one ({sorted(by_file)})")
    return by_file[p.name], p.parent


def _validate_hub_columns(df: pd.DataFrame, path: Path) -> None:
    """Check every hub column of every row; the error names file, row (1-based, data rows) and column."""
    def fail(i, col, msg):
        rid = df["repo_id"].iloc[i] if "repo_id" in df.columns else ""
        raise ManifestError(f"manifest {path}, row {i + 1} (line {i + 2}, repo_id {rid!r}), column {col!r}: {msg}")

    for i, row in enumerate(df.itertuples(index=False)):
        r = row._asdict()
        status, rev, repo_id = r["hub_status"], r["revision"], r["repo_id"]
        if r.get("repo_type", "model") not in REPO_TYPES:
            fail(i, "repo_type", f"{r['repo_type']!r} is not one of {REPO_TYPES}")
        if status not in HUB_STATUSES:
            fail(i, "hub_status", f"{status!r} is not one of {HUB_STATUSES}")
        if rev and not _SHA_RE.match(rev):
            fail(i, "revision", f"{rev!r} is not a 40-hex commit sha")
        for pat in split_cell(r["files"]):
            if is_forbidden_file(pat.rstrip("*")):
                fail(i, "files", f"pattern {pat!r} names pickles or original/* (never fetched)")
        try:
            sums = parse_checksums(r["checksums"])
        except ValueError as exc:
            fail(i, "checksums", str(exc))
        for c in sums:
            if is_forbidden_file(c.name):
                fail(i, "checksums", f"{c.name!r} is a pickle or under original/ (never fetched)")
            try:
                safe_paths.check_relative_name(c.name)
            except safe_paths.UnsafePathError as exc:
                fail(i, "checksums", str(exc))
        try:
            parse_expected_shapes(r["expected_shapes"])
        except ValueError as exc:
            fail(i, "expected_shapes", str(exc))
        has_owner = "/" in repo_id
        if status in ("unlocked", "locked", "lock_failed"):
            if not has_owner:
                fail(i, "repo_id", f"{repo_id!r} has no owner/ prefix: mark the entry 'unresolved'")
            try:
                safe_paths.check_repo_id(repo_id)
            except safe_paths.UnsafePathError as exc:
                fail(i, "repo_id", str(exc))
            if not split_cell(r["files"]):
                fail(i, "files", "no file patterns for a hub entry")
        if status == "locked":
            if not rev:
                fail(i, "revision", "entry is 'locked' but has no revision")
            if not sums:
                fail(i, "checksums", "entry is 'locked' but has no checksums")
        elif status == "unlocked" and (rev or sums):
            fail(i, "hub_status", "entry has a revision or checksums but is marked 'unlocked'")
        elif status in ("unresolved", "no_hub_checkpoint", "lock_failed") and not r["hub_note"]:
            fail(i, "hub_note", f"a {status!r} entry must say why")


def load_manifest(family: str, manifest_dir: Path | str | None = None) -> pd.DataFrame:
    """Read and validate the manifest of one model family.

    Parameters
    ----------
    family : str
        One of ``FAMILIES`` (e.g. ``"mistral7b_loras"``).
    manifest_dir : path, optional
        Directory holding the CSV files; defaults to the repository's ``data_manifests/``.

    Returns
    -------
    pandas.DataFrame with one row per listed model (all cells strings), in the order of the public list.
    """
    path = manifest_path(family, manifest_dir)  # refuses an unknown family
    _, expected, required = FAMILIES[family]
    if not path.is_file():
        raise ManifestError(f"manifest {path} is missing")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, OSError) as exc:  # pandas' ParserError / EmptyDataError are ValueErrors
        raise ManifestError(f"manifest {path} is not a readable CSV file: {exc}") from None
    missing = [c for c in (*required, *HUB_COLUMNS) if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest {path}: missing columns {missing}")
    if len(df) != expected:
        raise ManifestError(f"manifest {path}: {len(df)} rows, expected {expected}")
    key = "dataset" if family == "resnet50_datasets" else "repo_id"
    dup = df[key][df[key].duplicated()]
    if family != "resnet50_datasets" and len(dup):
        raise ManifestError(f"manifest {path}: duplicate {key} {dup.iloc[0]!r}")
    _validate_hub_columns(df, path)
    return df


def write_manifest(df: pd.DataFrame, family: str, manifest_dir: Path | str | None = None) -> Path:
    """Validate ``df`` as ``family``'s manifest and write it atomically (temporary file, then rename)."""
    path = manifest_path(family, manifest_dir)
    _validate_hub_columns(df, path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            df.to_csv(f, index=False, lineterminator="\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    load_manifest(family, path.parent)  # what was written reads back
    return path


def lora_split(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of the Mistral LoRA manifest in one of the authors' splits.

    ``split`` is ``"train"`` (the 492 source adapters of ``train.json``, IID test tasks included),
    ``"iid_test"`` (10 tasks inside train) or ``"ood_test"`` (10 held-out tasks of ``eval.json``).
    """
    parts = manifest["split"].str.split(";")
    if split == "train":
        mask = parts.map(lambda p: "train" in p)
    elif split in ("iid_test", "ood_test"):
        mask = parts.map(lambda p: split in p)
    else:
        raise ManifestError(f"unknown split {split!r}; use train, iid_test or ood_test")
    return manifest[mask.astype(bool)]


def repo_type_of(row) -> str:
    """An entry's repository type: its ``repo_type`` cell, ``model`` where the manifest has no such column."""
    return (row.get("repo_type", "") or "model") if hasattr(row, "get") else "model"


def local_dir(root: Path | str, repo_id: str, repo_type: str = "model") -> Path | None:
    """Where one hub repository lies under ``root``, or None.

    Accepted layouts: ``root/owner/name`` (``huggingface-cli download --local-dir root/owner/name``,
    and what ``uws download`` writes), ``root/owner__name`` and the hub cache
    ``root/models--owner--name/snapshots/<rev>`` (``datasets--owner--name`` for a dataset).
    """
    root = Path(root)
    try:  # a hostile id (``../x``, absolute) never names a directory outside ``root``
        safe_paths.check_repo_id(repo_id)
    except safe_paths.UnsafePathError:
        return None
    candidates = [root / repo_id, root / repo_id.replace("/", "__")]
    snaps = root / (f"{repo_type}s--" + repo_id.replace("/", "--")) / "snapshots"
    if snaps.is_dir():
        candidates += sorted(p for p in snaps.iterdir() if p.is_dir())
    for c in candidates:
        if c.is_dir() and not any(p.is_symlink() for p in (c, c.parent)) and root.resolve() in c.resolve().parents:
            return c
    return None


def local_dirs(manifest: pd.DataFrame, root: Path | str, allow_missing: bool = False) -> list[Path]:
    """Local directories of every manifest entry, in manifest order.

    Raises ManifestError naming the first missing entries unless ``allow_missing`` (then missing
    entries are skipped and the caller reports how many were found).
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"checkpoint root {root} does not exist")
    found, missing = [], []
    types = manifest["repo_type"] if "repo_type" in manifest.columns else ["model"] * len(manifest)
    for repo_id, repo_type in zip(manifest["repo_id"], types):
        d = local_dir(root, repo_id, repo_type) if repo_id else None
        (found if d is not None else missing).append(d if d is not None else repo_id)
    if missing and not allow_missing:
        shown = ", ".join(missing[:5])
        raise ManifestError(f"{len(missing)} of {len(manifest)} manifest entries are not under {root}: {shown}"
                            + (" ..." if len(missing) > 5 else ""))
    return found
