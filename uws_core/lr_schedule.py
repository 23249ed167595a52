"""The learning-rate schedule the laptop populations train with (ViT and Llama fine-tunes)."""

from __future__ import annotations

import math

__all__ = ["warmup_cosine"]


def warmup_cosine(step: int, total: int, lr: float, warmup_frac: float) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0; 0 once ``total`` is done."""
    if step >= total:
        return 0.0
    warm = max(1, int(math.ceil(warmup_frac * total)))
    if step < warm:
        return lr * (step + 1) / warm
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
