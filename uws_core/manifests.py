"""Paper-scale model lists (``data_manifests/*.csv``) and where their checkpoints lie on disk.

One CSV per model family, copied from the authors' code and the independent replication (see
``data_manifests/README.md``). This module reads a manifest, validates it (required columns, unique
ids, expected row count) and maps each entry to a local directory, refusing a mismatch with an
error that names the manifest and the entry. Downloading is not done here: a reviewer downloads
the adapters or checkpoints into one directory and points the notebooks at it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

MANIFEST_DIR = Path(__file__).resolve().parent.parent / "data_manifests"

# family -> (file, expected rows, required columns); counts are those of the public lists.
FAMILIES: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "mistral7b_loras": ("mistral7b_loras.csv", 502, ("repo_id", "task_id", "task_name", "split", "lora_rank")),
    "vit": ("vit.csv", 470, ("list_index", "repo_id", "owner_missing")),
    "llama8b": ("llama8b.csv", 622, ("list_index", "repo_id", "used_in_50_model_analysis")),
    "gpt2": ("gpt2.csv", 200, ("list_index", "repo_id")),
    "flan_t5": ("flan_t5.csv", 196, ("list_index", "repo_id", "task_slug")),
    "sdxl_style_loras": ("sdxl_style_loras.csv", 267, ("list_index", "repo_id")),
    "resnet50_datasets": ("resnet50_datasets.csv", 15, ("package", "dataset")),
}


class ManifestError(ValueError):
    """A manifest file or a local checkout that does not match it."""


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
    pandas.DataFrame with one row per listed model, in the order of the public list.
    """
    if family not in FAMILIES:
        raise ManifestError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    fname, expected, required = FAMILIES[family]
    path = Path(manifest_dir or MANIFEST_DIR) / fname
    if not path.is_file():
        raise ManifestError(f"manifest {path} is missing")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest {path}: missing columns {missing}")
    if len(df) != expected:
        raise ManifestError(f"manifest {path}: {len(df)} rows, expected {expected}")
    key = "dataset" if family == "resnet50_datasets" else "repo_id"
    dup = df[key][df[key].duplicated()]
    if family != "resnet50_datasets" and len(dup):
        raise ManifestError(f"manifest {path}: duplicate {key} {dup.iloc[0]!r}")
    return df


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


def local_dir(root: Path | str, repo_id: str) -> Path | None:
    """Where one hub repository lies under ``root``, or None.

    Accepted layouts: ``root/owner/name`` (``huggingface-cli download --local-dir root/owner/name``),
    ``root/owner__name`` and the hub cache ``root/models--owner--name/snapshots/<rev>``.
    """
    root = Path(root)
    candidates = [root / repo_id, root / repo_id.replace("/", "__")]
    snaps = root / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    if snaps.is_dir():
        candidates += sorted(p for p in snaps.iterdir() if p.is_dir())
    for c in candidates:
        if c.is_dir():
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
    for repo_id in manifest["repo_id"]:
        d = local_dir(root, repo_id)
        (found if d is not None else missing).append(d if d is not None else repo_id)
    if missing and not allow_missing:
        shown = ", ".join(missing[:5])
        raise ManifestError(f"{len(missing)} of {len(manifest)} manifest entries are not under {root}: {shown}"
                            + (" ..." if len(missing) > 5 else ""))
    return found
