"""Lazy loader of a population of transformers checkpoints (safetensors only).

A checkpoint directory holds either one ``model.safetensors`` or a sharded
``model.safetensors.index.json`` (``{"weight_map": {key: shard_file}}``) plus its shards, as
written by ``PreTrainedModel.save_pretrained``. ``CheckpointSet`` reads only the safetensors
headers when it is built (key names, shapes, dtypes; the header parser also refuses a truncated
or corrupt file), checks that every model holds the same 2-D floating weights with the same
shapes, and then loads one tensor of one model at a time, upcast to float64, so a stack of N
models is built from N reads of one key (``stack``) or streamed (``iter_key``) into
``uws_core.linalg.spectral.StreamingSpectrum`` without holding N full models in memory.

Pickle files (``pytorch_model.bin``) are refused: unpickling runs arbitrary code.

The small safetensors helpers here (``read_safetensors_header``, ``load_tensor``) are shared
with ``uws_core.weights.adapters``; ``save_checkpoint`` / ``load_checkpoint_state`` write and read the single-file
checkpoints of the laptop populations (``uws_core.zoo.vit_model``, ``uws_core.zoo.llama_model``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from uws_core.linalg.numerics import transformers_quiet
from uws_core.weights import dtype_policy, safe_paths

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")
# safetensors dtype codes of floating tensors (everything else, e.g. I64 buffers, is skipped)
FLOAT_DTYPES = dtype_policy.FLOAT_CODES


class WeightFormatError(ValueError):
    """A weight file or directory that cannot be read as asked; the message names file and key."""


class CheckpointFormatError(WeightFormatError):
    """A transformers checkpoint that is missing, corrupt or inconsistent with the others."""


class MissingCheckpointFileError(CheckpointFormatError, FileNotFoundError):
    """A checkpoint file (single file, index or shard) that does not exist."""


def natural_key(key: str) -> list:
    """Sort key that orders ``layers.2`` before ``layers.10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def unique_names(dirs: Sequence[Path]) -> list[str]:
    """Short unique labels for directories: the basenames, or paths relative to their common parent."""
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(d.resolve()) for d in dirs]))
    return [str(d.resolve().relative_to(common)) or d.name for d in dirs]


def named_paths(paths: Sequence[Path | str], names: Sequence[str] | None, error: type[Exception], what: str,
                one: str = "directory") -> tuple[list[Path], list[str]]:
    """The models of a set: ``paths`` as Paths and one unique label each (default :func:`unique_names`).
    ``error`` is raised when no path is given ("no ``what`` given") or the labels are not unique, one per
    ``one``."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise error(f"no {what} given")
    names = list(names) if names is not None else unique_names(paths)
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise error(f"names must be unique, one per {one}; got {names}")
    return paths, names


def model_dirs_under(root: Path | str, find, error: type[Exception], what: str, marker: str
                     ) -> tuple[list[Path], list[str]]:
    """Every model directory ``find(root)`` returns (any depth, e.g. ``root/owner/name``), named by its path
    relative to ``root``; ``error`` names the missing root or, when none is found, the ``marker`` file looked for."""
    root = Path(root)
    if not root.is_dir():
        raise error(f"{what} root {root} does not exist")
    dirs = find(root)
    if not dirs:
        raise error(f"no {what} ({marker}) under {root}")
    return dirs, [p.relative_to(root).as_posix() for p in dirs]


def refuse_pickles(directory: Path, error: type[WeightFormatError]) -> None:
    """Raise ``error`` when ``directory`` only offers pickle weights (``*.bin``)."""
    found = [f for f in PICKLE_FILES if (directory / f).is_file()]
    if found:
        raise error(f"{directory}: only pickle weights ({', '.join(found)}) found; pickles are not loaded "
                    "(unpickling can run arbitrary code): convert them to safetensors first")


def read_safetensors_header(path: Path, error: type[WeightFormatError] = CheckpointFormatError,
                            owner: str = "") -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, safetensors dtype code) of one safetensors file, without reading any data.

    The header parser checks that the declared byte ranges cover the file exactly, so a truncated
    file, a file with trailing bytes or a garbage header raises ``error`` naming the file.
    """
    where = f"{owner}: " if owner else ""
    if not path.is_file():
        raise error(f"{where}{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for key in f.keys():
                sl = f.get_slice(key)
                out[key] = (tuple(int(s) for s in sl.get_shape()), str(sl.get_dtype()))
            return out
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{where}{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc


def load_tensor(path: Path, key: str, error: type[WeightFormatError] = CheckpointFormatError,
                owner: str = "") -> torch.Tensor:
    """One tensor of a safetensors file as float64 on CPU; refuses NaN/Inf naming file and key."""
    where = f"{owner}: " if owner else ""
    try:
        with safe_open(str(path), framework="pt") as f:
            t = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise error(f"{where}cannot read key {key!r} from {path}: {exc}") from exc
    t = t.to(torch.float64)  # bf16 / fp16 / fp32 are upcast exactly
    if not torch.isfinite(t).all():
        n_bad = int((~torch.isfinite(t)).sum())
        raise error(f"{where}key {key!r} in {path} holds {n_bad} non-finite values (NaN/Inf)")
    return t


def is_checkpoint_dir(directory: Path | str) -> bool:
    """True if ``directory`` holds ``model.safetensors`` or ``model.safetensors.index.json``."""
    d = Path(directory)
    return (d / SINGLE_FILE).is_file() or (d / INDEX_FILE).is_file()


def save_checkpoint(model, directory: Path | str) -> Path:
    """``model.save_pretrained(directory, safe_serialization=True)`` (config.json + model.safetensors), without
    transformers' per-model progress bar (restored afterwards) or its FutureWarnings."""
    import warnings

    with transformers_quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.save_pretrained(Path(directory), safe_serialization=True)
    return Path(directory)


def load_checkpoint_state(directory: Path | str) -> dict[str, torch.Tensor]:
    """Every tensor of a single-file checkpoint (``model.safetensors``), keys and dtypes as saved."""
    from safetensors.torch import load_file

    path = Path(directory) / SINGLE_FILE
    if not path.is_file():
        raise MissingCheckpointFileError(f"{path} does not exist")
    return load_file(str(path))


def find_checkpoint_dirs(root: Path | str) -> list[Path]:
    """Directories strictly under ``root`` (any depth) that hold a checkpoint, in natural path order."""
    root = Path(root)
    found = {p.parent for name in (SINGLE_FILE, INDEX_FILE) for p in root.rglob(name)} - {root}
    return sorted(found, key=lambda p: natural_key(p.relative_to(root).as_posix()))


def checkpoint_tensor_files(directory: Path, owner: str = "") -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """Key -> (file, shape, dtype) of every tensor of one checkpoint directory (headers only).

    Uses ``model.safetensors`` or the sharded index. Refuses a missing directory, a directory holding both
    (two weight sets: which one is meant is not guessed), pickle-only checkpoints, a malformed index (also
    one naming a key twice), a shard name that leaves the directory (absolute, ``..``, a symlink out), a
    shard named in the index that is missing or corrupt, an index key that its shard does not hold, and a
    key held by two shards.
    """
    where = owner or str(directory)
    if not directory.is_dir():
        raise MissingCheckpointFileError(f"{where}: checkpoint directory {directory} does not exist")
    single, index = directory / SINGLE_FILE, directory / INDEX_FILE
    if single.is_file() and index.is_file():
        raise CheckpointFormatError(f"{where}: {directory} holds two weight sets ({SINGLE_FILE} and {INDEX_FILE}); "
                                    "keep one")
    if single.is_file():
        header = read_safetensors_header(single, CheckpointFormatError, where)
        return {k: (single, shape, dt) for k, (shape, dt) in header.items()}
    if not index.is_file():
        refuse_pickles(directory, CheckpointFormatError)
        raise MissingCheckpointFileError(f"{where}: neither {SINGLE_FILE} nor {INDEX_FILE} in {directory}")
    def no_duplicates(pairs):
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise ValueError(f"key {k!r} is named twice")
            seen[k] = v
        return seen

    try:
        weight_map = json.loads(index.read_text(), object_pairs_hook=no_duplicates)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
        bad = next(((k, v) for k, v in weight_map.items() if not isinstance(v, str)), None)
        if bad is not None:
            raise TypeError(f"key {bad[0]!r} maps to {bad[1]!r}, not a shard file name")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointFormatError(f"{where}: malformed index {index}: {exc}") from exc
    headers: dict[str, dict] = {}
    out = {}
    for key, shard in weight_map.items():
        if shard not in headers:
            try:
                path = safe_paths.contained(directory, shard, f"{where}: {index}, key {key!r}")
            except safe_paths.UnsafePathError as exc:
                raise CheckpointFormatError(f"{exc} (a weight map may only name shards inside its own "
                                            "directory)") from None
            if not path.is_file():
                raise MissingCheckpointFileError(
                    f"{where}: shard {shard} named in {index} (key {key!r}) does not exist")
            headers[shard] = read_safetensors_header(path, CheckpointFormatError, where)
        if key not in headers[shard]:
            raise CheckpointFormatError(f"{where}: {index} puts key {key!r} in {shard}, which lacks it")
        shape, dt = headers[shard][key]
        out[key] = (directory / shard, shape, dt)
    for shard, header in headers.items():  # a key in a shard the index does not assign it to: two copies
        for key in header:
            if weight_map.get(key) != shard:
                other = weight_map.get(key)
                raise CheckpointFormatError(f"{where}: key {key!r} is in shard {shard} but {index} assigns it to "
                                            f"{other if other else 'no shard'}; a key held twice (or unlisted) is "
                                            "not resolved silently")
    return out


def check_weight_tensors(files: dict, owner: str) -> None:
    """The dtype policy (:mod:`uws_core.weights.dtype_policy`) on a checkpoint's matrices: every 2-D or 4-D floating
    tensor (what is analysed) must be non-empty, and one whose key ends in ``weight`` must be floating (an int8 /
    uint8 / bool / int64 "weight" is quantised data, never analysed as numbers); other non-floating tensors
    (``position_ids`` buffers) are skipped."""
    for key, (path, shape, dt) in files.items():
        if len(shape) in (2, 4) and (key.endswith("weight") or dt in FLOAT_DTYPES):
            dtype_policy.check_weight(path, key, shape, dt, owner, CheckpointFormatError)


class CheckpointSet:
    """N transformers checkpoints of one architecture, read lazily one weight at a time.

    Parameters
    ----------
    dirs : sequence of paths
        Checkpoint directories (``model.safetensors`` or sharded ``model.safetensors.index.json``).
    names : sequence of str, optional
        Labels of the models; default: directory basenames (made unique).
    strict : bool
        If True (default), every model must hold the same set of 2-D floating weights with the
        same shapes, else ``CheckpointFormatError`` names the model and the key. If False, keys
        missing in some model or with differing shapes are dropped from ``weight_keys`` (logged).

    Attributes
    ----------
    names : list of str
    dirs : list of Path
    weight_keys : list of str
        2-D floating weights common to all models (e.g. ``"model.layers.0.self_attn.q_proj.weight"``),
        in natural order (layer 2 before layer 10).
    """

    def __init__(self, dirs: Sequence[Path | str], names: Sequence[str] | None = None, strict: bool = True):
        self.dirs, self.names = named_paths(dirs, names, CheckpointFormatError, "checkpoint directories")
        # per model: key -> (file, shape, dtype) of its 2-D floating tensors
        self._files = []
        for name, d in zip(self.names, self.dirs):
            files = checkpoint_tensor_files(d, owner=f"model {name!r} ({d})")
            check_weight_tensors(files, f"model {name!r} ({d})")
            self._files.append({k: v for k, v in files.items() if len(v[1]) == 2 and v[2] in FLOAT_DTYPES})
        self.weight_keys = self._common_keys(strict)
        self._key_set = frozenset(self.weight_keys)
        if not self.weight_keys:
            raise CheckpointFormatError(f"no 2-D floating weight common to all of {self.dirs}")

    @classmethod
    def from_dirs(cls, dirs: Sequence[Path | str], names: Sequence[str] | None = None,
                  strict: bool = True) -> "CheckpointSet":
        """Checkpoints in the given directories (order kept)."""
        return cls(dirs, names=names, strict=strict)

    @classmethod
    def from_root(cls, root: Path | str, strict: bool = True) -> "CheckpointSet":
        """Every directory under ``root`` (any depth, e.g. ``root/owner/name``) holding a checkpoint.

        Names are the paths relative to ``root``, in natural order.
        """
        dirs, names = model_dirs_under(root, find_checkpoint_dirs, MissingCheckpointFileError, "checkpoint",
                                       f"{SINGLE_FILE} or {INDEX_FILE}")
        return cls(dirs, names=names, strict=strict)

    def _common_keys(self, strict: bool) -> list[str]:
        ref_name, ref = self.names[0], self._files[0]
        keys = set(ref)
        for d, name, files in zip(self.dirs[1:], self.names[1:], self._files[1:]):
            missing, extra = sorted(keys - set(files), key=natural_key), sorted(set(files) - keys, key=natural_key)
            if strict and (missing or extra):
                what = (f"lacks 2-D weight {missing[0]!r} that model {ref_name!r} holds" if missing
                        else f"holds 2-D weight {extra[0]!r} that model {ref_name!r} lacks")
                raise CheckpointFormatError(f"model {name!r} ({d}) {what} "
                                            f"({len(missing)} missing, {len(extra)} extra keys)")
            keys &= set(files)
        for key in sorted(keys, key=natural_key):
            for name, files in zip(self.names[1:], self._files[1:]):
                if files[key][1] != ref[key][1]:
                    msg = (f"model {name!r}: key {key!r} has shape {files[key][1]} in {files[key][0]}, "
                           f"but {ref[key][1]} in model {ref_name!r}")
                    if strict:
                        raise CheckpointFormatError(msg)
                    log.warning("dropping key: %s", msg)
                    keys.discard(key)
                    break
        if not strict:
            n_all = len(set().union(*self._files))
            if len(keys) < n_all:
                log.warning("%d of %d 2-D weight keys are common to all %d models", len(keys), n_all, len(self))
        return sorted(keys, key=natural_key)

    def __len__(self) -> int:
        return len(self.dirs)

    def _check_key(self, key: str) -> None:
        if key not in self._key_set:
            raise KeyError(f"{key!r} is not a 2-D weight common to all models of this CheckpointSet")

    def shape(self, key: str) -> tuple[int, int]:
        """(d_out, d_in) of one weight key."""
        self._check_key(key)
        return self._files[0][key][1]

    def dtype(self, key: str, model: int = 0) -> str:
        """Stored safetensors dtype code (e.g. ``"BF16"``) of one key in one model."""
        self._check_key(key)
        return self._files[model][key][2]

    def load(self, model: int | str, key: str) -> torch.Tensor:
        """Weight ``key`` of one model (index or name) as a (d_out, d_in) float64 tensor."""
        self._check_key(key)
        if isinstance(model, str) and model not in self.names:
            raise KeyError(f"no model named {model!r} in this CheckpointSet")
        i = self.names.index(model) if isinstance(model, str) else int(model)
        path, shape, _ = self._files[i][key]
        w = load_tensor(path, key, CheckpointFormatError, owner=f"model {self.names[i]!r}")
        if tuple(w.shape) != shape:  # the header said otherwise: the file changed under us
            raise CheckpointFormatError(f"model {self.names[i]!r}: key {key!r} in {path} has shape "
                                        f"{tuple(w.shape)}, header said {shape}")
        return w

    def iter_key(self, key: str) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (model_name, W_i) with W_i of shape (d_out, d_in) float64, one model at a time."""
        self._check_key(key)
        for i, name in enumerate(self.names):
            yield name, self.load(i, key)

    def stack(self, key: str) -> torch.Tensor:
        """All models' weight ``key`` stacked: (N, d_out, d_in) float64 on CPU."""
        out = torch.empty((len(self), *self.shape(key)), dtype=torch.float64)  # (N, d_out, d_in)
        for i, (_, w) in enumerate(self.iter_key(key)):
            out[i] = w
        return out

    def __repr__(self) -> str:
        return f"CheckpointSet({len(self)} models, {len(self.weight_keys)} 2-D weight keys)"
