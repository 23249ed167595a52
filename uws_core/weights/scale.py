"""Which weights a run reads: ``UWS_SCALE=laptop`` (default: the populations our code trains, from the cache)
or ``paper`` (the real checkpoints of ``data_manifests/``, downloaded by ``uws download``)."""

from __future__ import annotations

import os

__all__ = ["SCALES", "scale"]

SCALES = ("laptop", "paper")


def scale() -> str:
    """The run scale from ``UWS_SCALE`` (default ``laptop``); an unknown value is an error."""
    value = os.environ.get("UWS_SCALE", "laptop")
    if value not in SCALES:
        raise ValueError(f"UWS_SCALE={value!r} is not one of {SCALES}")
    return value
