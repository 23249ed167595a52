"""Data, losses and accuracies of adaptation runs (:func:`uws_core.experiments.adaptation.fit_runs`) on the two laptop
populations, G runs at a time.

Causal LM (the tiny Mistral of :mod:`uws_core.zoo.lora_zoo`): :func:`lm_loss_fn`, each run's answer NLL on its own
task; evaluate a trained dense update with :func:`uws_core.weights.peft_state.dense_lora_state` and
:meth:`uws_core.zoo.lora_zoo.LoraPopulation.evaluate`. ViT (:mod:`uws_core.zoo.vit_zoo`): each run trains on
:func:`uws_core.zoo.vit_tasks.held_out_split` of its task (a validation subset held out of the train split);
:func:`vit_loss_fn` and :func:`vit_accuracy` on heads padded to the largest task, with
:func:`uws_core.zoo.vit_model.class_mask` hiding the padded rows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from uws_core.experiments.adaptation import functional_forward
from uws_core.zoo.vit_model import class_mask, pad_examples, stacked_accuracy, vit_logits

__all__ = ["lm_loss_fn", "vit_loss_fn", "vit_accuracy"]


# ------------------------------------------------------------------------------------------ causal LM
def lm_loss_fn(module: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, seeds, batch_size: int):
    """Per-run loss for :func:`uws_core.experiments.adaptation.fit_runs` on a causal LM: run g's mean answer NLL
    (:func:`uws_core.zoo.tinylm.answer_nll`) on ``batch_size`` of its own examples ``ids[g]`` (G, n, T) / ``mask``,
    drawn without replacement from ``np.random.default_rng(seeds[g])`` at every step."""
    from uws_core.zoo.tinylm import answer_nll

    g, n = ids.shape[:2]
    rngs = [np.random.default_rng(int(s)) for s in seeds]
    rows = torch.arange(g)[:, None]

    def loss_fn(weights, step):
        pick = torch.from_numpy(np.stack([r.choice(n, batch_size, replace=False) for r in rngs]))  # (G, B)
        b_ids, b_mask = ids[rows, pick], mask[rows, pick]                                           # (G, B, T)
        t = int((b_ids != 0).sum(-1).max())                                 # pad id 0: trim to the longest
        logits = functional_forward(module, weights, b_ids[..., :t], output=lambda o: o.logits,
                                    kwargs={"use_cache": False})                              # (G, B, t, V)
        return torch.stack([answer_nll(logits[i], b_ids[i, :, :t], b_mask[i, :, :t]).mean() for i in range(g)])

    return loss_fn


# ------------------------------------------------------------------------------------------ ViT tasks

def vit_loss_fn(splits: list[dict], n_classes, seeds, batch_size: int, steps: int, config):
    """Per-run loss for :func:`uws_core.experiments.adaptation.fit_runs` on the ViT: cross-entropy of run g on ``batch_size``
    examples of ``splits[g]["train"]`` per step, from shuffled epochs seeded by ``seeds[g]``."""
    xs = pad_examples([s["train"][0] for s in splits], 0.0)                               # (G, n, 8, 8)
    ys = pad_examples([s["train"][1] for s in splits], 0)                                 # (G, n)
    order = []
    for s, seed in zip(splits, seeds):
        n, rng = len(s["train"][1]), np.random.default_rng(int(seed))
        reps = int(math.ceil(steps * batch_size / n))
        order.append(np.concatenate([rng.permutation(n) for _ in range(reps)])[:steps * batch_size])
    order = torch.from_numpy(np.stack(order).reshape(len(splits), steps, batch_size))   # (G, steps, B)
    rows = torch.arange(len(splits))[:, None]

    def loss_fn(weights, step):
        idx = order[:, step]                                                               # (G, B)
        mask = class_mask(n_classes, weights["classifier.weight"].shape[1])                # padded head rows
        logits = vit_logits(weights, xs[rows, idx], config) + mask                         # (G, B, L)
        return F.cross_entropy(logits.transpose(1, 2), ys[rows, idx], reduction="none").mean(1)

    return loss_fn


def vit_accuracy(weights: dict[str, torch.Tensor], splits: list[dict], split: str, n_classes, config,
                 chunk: int = 256) -> np.ndarray:
    """Accuracy (G,) of run g's stacked weights on ``splits[g][split]`` (``splits`` from
    :func:`uws_core.zoo.vit_tasks.held_out_split`): :func:`uws_core.zoo.vit_model.stacked_accuracy`, ``chunk``
    examples per forward, under the caller's compute settings."""
    return stacked_accuracy(weights, [s[split][0] for s in splits], [s[split][1] for s in splits], n_classes,
                            config, chunk)
