"""Device and dtype policy in one place.

Every numerical routine in :mod:`uws_core` takes ``device=None`` and resolves it here, so there is never a
hidden ``.cuda()``: CUDA when present, else CPU, and the environment variable ``UWS_DEVICE`` (e.g. ``cpu``,
``cuda:1``) overrides both. Accumulation is float64 unless a caller asks otherwise.
"""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["pick_device", "as_tensor", "ACCUM_DTYPE"]

#: dtype used to accumulate Gram matrices, sums and eigen-decompositions.
ACCUM_DTYPE = torch.float64


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device to compute on.

    Parameters
    ----------
    device : str or torch.device, optional
        An explicit choice wins. Otherwise the environment variable ``UWS_DEVICE`` is used when set, else
        ``cuda`` when a GPU is available, else ``cpu``.

    Returns
    -------
    torch.device
    """
    if device is not None:
        return torch.device(device)
    env = os.environ.get("UWS_DEVICE", "").strip()
    if env:
        try:
            return torch.device(env)
        except RuntimeError as err:  # torch raises RuntimeError on an unparsable device string
            raise ValueError(f"UWS_DEVICE={env!r} is not a valid torch device") from err
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_tensor(x, dtype: torch.dtype | None = ACCUM_DTYPE, device: torch.device | None = None) -> torch.Tensor:
    """Convert ``x`` (numpy array, torch tensor or nested list) to a torch tensor.

    ``dtype=None`` keeps the input's own dtype (used when inputs are stored, not accumulated); bf16/fp16 are
    upcast exactly to float64 when ``dtype`` is float64. The device defaults to the input's own device for
    tensors and to CPU for everything else.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    return x.to(device=device if device is not None else x.device, dtype=dtype if dtype is not None else x.dtype)
