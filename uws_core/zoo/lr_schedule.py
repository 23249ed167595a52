"""The learning-rate schedules of every training loop, in one place.

Three shapes, each kept bit for bit because populations and results were trained with it:
:func:`warmup_cosine` (ViT and Llama fine-tunes: the learning rate itself, 0 after the last step),
:func:`warmup_cosine_factor` (coefficient-only adaptation: the factor multiplying each run's rate) and
:func:`warmup_cosine_to_tenth` (the tiny Mistral's base and LoRA training: warm-up in steps, decay to 0.1).
"""

from __future__ import annotations

import math

__all__ = ["warmup_cosine", "warmup_cosine_factor", "warmup_cosine_to_tenth"]


def warmup_cosine(step: int, total: int, lr: float, warmup_frac: float) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0; 0 once ``total`` is done."""
    if step >= total:
        return 0.0
    warm = max(1, int(math.ceil(warmup_frac * total)))
    if step < warm:
        return lr * (step + 1) / warm
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def warmup_cosine_factor(step: int, steps: int, warmup_frac: float = 0.1) -> float:
    """Factor of the learning rate: linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0."""
    warm = max(1, int(math.ceil(warmup_frac * steps)))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def warmup_cosine_to_tenth(step: int, steps: int, warmup: int) -> float:
    """Factor of the learning rate: linear warm-up over ``warmup`` steps, then cosine decay from 1 to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
