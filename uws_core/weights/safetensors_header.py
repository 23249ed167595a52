"""The weight-format errors and the safetensors header reader, without torch.

A safetensors file's header (keys, shapes, dtype codes, byte ranges) is read by the ``safetensors`` library with
its numpy framework, which parses the header and checks that the declared byte ranges cover the file exactly,
without importing torch: the hub client (:mod:`uws_core.weights.hub`, ``uws manifest lock`` / ``uws download``)
checks downloaded files with it. :mod:`uws_core.weights.checkpoints` re-exports every name.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open

__all__ = ["WeightFormatError", "CheckpointFormatError", "MissingCheckpointFileError", "read_safetensors_header"]


class WeightFormatError(ValueError):
    """A weight file or directory that cannot be read as asked; the message names file and key."""


class CheckpointFormatError(WeightFormatError):
    """A transformers checkpoint that is missing, corrupt or inconsistent with the others."""


class MissingCheckpointFileError(CheckpointFormatError, FileNotFoundError):
    """A checkpoint file (single file, index or shard) that does not exist."""


def read_safetensors_header(path: Path, error: type[WeightFormatError] = CheckpointFormatError,
                            owner: str = "") -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, safetensors dtype code, e.g. ``"BF16"``) of one safetensors file, without reading any data.

    The library's header parser checks that the declared byte ranges cover the file exactly, so a truncated
    file, a file with trailing bytes or a garbage header raises ``error`` naming the file. The numpy framework
    only sets how tensors would be returned; shapes and dtype codes come from the header (bf16 included).
    """
    where = f"{owner}: " if owner else ""
    if not path.is_file():
        raise error(f"{where}{path} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            out = {}
            for key in f.keys():
                sl = f.get_slice(key)
                out[key] = (tuple(int(s) for s in sl.get_shape()), str(sl.get_dtype()))
            return out
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{where}{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
