"""Data, losses and accuracies of adaptation runs (:func:`uws_core.experiments.adaptation.fit_runs`) on the two laptop
populations, G runs at a time.

Causal LM (the tiny Mistral of :mod:`uws_core.zoo.lora_zoo`): :func:`lm_loss_fn`, each run's answer NLL on its own
task; evaluate a trained dense update with :func:`uws_core.weights.peft_state.dense_lora_state` and
:meth:`uws_core.zoo.lora_zoo.LoraPopulation.evaluate`. ViT (:mod:`uws_core.zoo.vit_zoo`): :func:`vit_split` (a fixed
validation subset of a task's train split), :func:`vit_loss_fn` and :func:`vit_accuracy` on heads padded to
the largest task, with :func:`class_mask` hiding the padded rows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from uws_core.experiments.adaptation import functional_forward

__all__ = ["lm_loss_fn", "vit_split", "class_mask", "vit_loss_fn", "vit_accuracy"]


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

def vit_split(task: str, config, val_fraction: float = 0.2, n_train: int | None = None) -> dict:
    """Train / val / test images (n, 8, 8) and labels of one ViT task. ``val`` is a fixed subset of the train
    split (the ViT tasks have only train / test): a permutation seeded by the task name, its first
    ``round(val_fraction * n)`` examples; ``train`` is the rest (its first ``n_train`` when given)."""
    from uws_core.zoo.vit_tasks import stable_seed, task_data

    x, y = task_data(task, "train", config.test_fraction, config.split_seed)
    perm = np.random.default_rng(stable_seed(task, "adaptation-val")).permutation(len(y))
    n_val = int(round(val_fraction * len(y)))
    tr = np.sort(perm[n_val:][:n_train])
    va = np.sort(perm[:n_val])
    if len(tr) == 0 or len(va) == 0:
        raise ValueError(f"task {task!r}: {len(tr)} train / {len(va)} val examples after the split")
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]),
            "test": task_data(task, "test", config.test_fraction, config.split_seed)}


def _padded(arrays, fill):
    out = np.full((len(arrays), max(len(a) for a in arrays), *arrays[0].shape[1:]), fill, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return torch.from_numpy(out)


def class_mask(n_classes, n_labels: int) -> torch.Tensor:
    """(G, 1, n_labels): 0 on a run's own classes, -inf on the padded head rows."""
    m = torch.full((len(n_classes), 1, n_labels), float("-inf"))
    for i, c in enumerate(n_classes):
        m[i, :, :int(c)] = 0.0
    return m


def vit_loss_fn(splits: list[dict], n_classes, seeds, batch_size: int, steps: int, config):
    """Per-run loss for :func:`uws_core.experiments.adaptation.fit_runs` on the ViT: cross-entropy of run g on ``batch_size``
    examples of ``splits[g]["train"]`` per step, from shuffled epochs seeded by ``seeds[g]``."""
    from uws_core.zoo.vit_model import vit_logits

    xs = _padded([s["train"][0] for s in splits], 0.0)                                    # (G, n, 8, 8)
    ys = _padded([s["train"][1] for s in splits], 0)                                      # (G, n)
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


@torch.no_grad()
def vit_accuracy(weights: dict[str, torch.Tensor], splits: list[dict], split: str, n_classes, config,
                 chunk: int = 256) -> np.ndarray:
    """Accuracy (G,) of run g's weights on ``splits[g][split]``, ``chunk`` examples per forward."""
    from uws_core.zoo.vit_model import vit_logits

    xs = _padded([s[split][0] for s in splits], 0.0)
    ys = _padded([s[split][1] for s in splits], -1)                                       # -1: padding, never right
    mask = class_mask(n_classes, weights["classifier.weight"].shape[1])
    correct = torch.zeros(len(splits), dtype=torch.float64)
    for i in range(0, xs.shape[1], chunk):
        pred = (vit_logits(weights, xs[:, i:i + chunk], config) + mask).argmax(-1)
        correct += (pred == ys[:, i:i + chunk]).sum(1).double()
    return (correct / torch.tensor([len(s[split][1]) for s in splits], dtype=torch.float64)).numpy()
