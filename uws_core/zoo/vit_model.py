"""The small ViT of the laptop populations: its transformers config, checkpoint I/O in the real key
names, a batched functional forward (:func:`vit_logits`) and batched training / evaluation of many models.

Split from :mod:`uws_core.zoo.vit_zoo`, which builds and caches the populations with these pieces. The
functional forward runs ``G`` models at once on stacked parameters (G, ...) and equals transformers'
``ViTForImageClassification`` forward to float32 round-off (tests/test_vit_zoo.py checks it).
"""

from __future__ import annotations

import logging
import math
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from uws_core.weights.checkpoints import load_checkpoint_state as load_state
from uws_core.weights.checkpoints import save_checkpoint
from uws_core.zoo.lr_schedule import warmup_cosine
from uws_core.linalg.numerics import compute_settings
from uws_core.zoo.vit_tasks import IMAGE_SIZE, parse_task, task_data, train_sample_indices


class VitSettings(Protocol):
    """What the model's functions read of a population plan (:class:`uws_core.zoo.vit_zoo.VitZooConfig` is one):
    the architecture (patch, width, depth, heads, MLP) and the training settings (batch, warmup, data split)."""
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    batch_size: int
    warmup_frac: float
    test_fraction: float
    split_seed: int

__all__ = ["vit_config", "init_state", "save_vit", "load_state", "vit_logits", "train_models", "stacked_accuracy",
           "evaluate_states", "pad_examples", "class_mask"]

log = logging.getLogger(__name__)
# Training runs on one thread (restored afterwards): the same bits whatever the machine's core count, and at
# this size a second thread gains little (and loses a lot when the cores are shared).
TRAIN_THREADS = 1


def vit_config(config: VitSettings, num_labels: int = 10):
    """The ``transformers.ViTConfig`` of the population (no dropout, 1 channel, 8x8 images)."""
    from transformers import ViTConfig

    if IMAGE_SIZE % config.patch_size:
        raise ValueError(f"patch_size {config.patch_size} does not divide the image size {IMAGE_SIZE}")
    return ViTConfig(image_size=IMAGE_SIZE, patch_size=config.patch_size, num_channels=1,
                     hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                     num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=num_labels)


@lru_cache(maxsize=8)
def _checkpoint_names(config: VitSettings) -> tuple[tuple[str, str], ...]:
    """(module parameter name, saved key) pairs, read from what ``save_pretrained`` actually writes.

    transformers 5 renames ViT's modules internally (``vit.layers.0.attention.q_proj``) and converts back
    to the original keys on save; filling every parameter with distinct values and saving once recovers the
    mapping without depending on either naming.
    """
    from safetensors.torch import load_file

    model = _hf_model(config, 2)
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.arange(offset, offset + p.numel(), dtype=p.dtype).reshape(p.shape))
            offset += p.numel()
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, Path(tmp))
        saved = load_file(str(Path(tmp) / "model.safetensors"))
    by_first = {float(t.reshape(-1)[0]): k for k, t in saved.items()}
    return tuple((n, by_first[float(p.detach().reshape(-1)[0])]) for n, p in model.named_parameters())


def _hf_model(config: VitSettings, num_labels: int, seed: int = 0):
    """A ``ViTForImageClassification`` initialised under ``seed``; the global torch RNG is left as it was."""
    from transformers import ViTForImageClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return ViTForImageClassification(vit_config(config, num_labels)).eval()


def init_state(config: VitSettings, num_labels: int, seed: int) -> dict[str, torch.Tensor]:
    """transformers' own random initialisation of a ViT under ``seed``, keyed by the saved key names.

    The global torch RNG is left as it was.
    """
    params = dict(_hf_model(config, num_labels, seed).named_parameters())
    return {key: params[name].detach().clone() for name, key in _checkpoint_names(config)}


def save_vit(state: dict[str, torch.Tensor], directory: Path | str, config: VitSettings) -> Path:
    """Write one model with ``ViTForImageClassification.save_pretrained`` (config.json + model.safetensors)."""
    num_labels = int(state["classifier.weight"].shape[0])
    model = _hf_model(config, num_labels)
    names = dict(_checkpoint_names(config))
    missing = set(names.values()) - set(state)
    if missing:
        raise KeyError(f"state for {directory} lacks keys {sorted(missing)[:3]}")
    model.load_state_dict({n: state[k].to(torch.float32) for n, k in names.items()}, strict=True)
    return save_checkpoint(model, directory)


def _linear(x, w, b):
    """Per-model affine map: x (G, M, d_in), w (G, d_out, d_in), b (G, d_out) -> (G, M, d_out)."""
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


def _layer_norm(x, w, b, eps):
    return F.layer_norm(x, x.shape[-1:], eps=eps) * w.unsqueeze(1) + b.unsqueeze(1)


def vit_logits(params: dict[str, torch.Tensor], images: torch.Tensor, config: VitSettings,
               eps: float = 1e-12) -> torch.Tensor:
    """Forward pass of G ViTs at once (the computation of ``ViTForImageClassification``, no dropout).

    Parameters
    ----------
    params : dict of saved key -> tensor with a leading model axis G (e.g. query weight (G, H, H))
    images : (G, B, 8, 8) float32 in [0, 1] (normalised here to [-1, 1] as the ViT processor does)

    Returns
    -------
    logits (G, B, num_labels)
    """
    g, b = images.shape[:2]
    p, hid, nh = config.patch_size, config.hidden_size, config.num_heads
    s, hd = IMAGE_SIZE // p, config.hidden_size // config.num_heads
    x = images * 2.0 - 1.0
    patches = x.reshape(g, b, s, p, s, p).permute(0, 1, 2, 4, 3, 5).reshape(g, b * s * s, p * p)  # (G, B*S*S, p*p)
    e = "vit.embeddings."
    h = _linear(patches, params[e + "patch_embeddings.projection.weight"].reshape(g, hid, p * p),
                params[e + "patch_embeddings.projection.bias"]).reshape(g, b, s * s, hid)
    cls = params[e + "cls_token"].reshape(g, 1, 1, hid).expand(g, b, 1, hid)
    h = torch.cat([cls, h], dim=2) + params[e + "position_embeddings"].reshape(g, 1, s * s + 1, hid)
    t = s * s + 1
    h = h.reshape(g, b * t, hid)  # (G, B*T, H)
    for layer in range(config.num_layers):
        pre = f"vit.encoder.layer.{layer}."
        a = _layer_norm(h, params[pre + "layernorm_before.weight"], params[pre + "layernorm_before.bias"], eps)
        att_pre = pre + "attention.attention."
        q, k, v = (_linear(a, params[f"{att_pre}{n}.weight"], params[f"{att_pre}{n}.bias"])
                   .reshape(g * b, t, nh, hd).transpose(1, 2) for n in ("query", "key", "value"))  # (G*B, nh, T, hd)
        att = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(hd)) v
        att = att.transpose(1, 2).reshape(g, b * t, hid)
        h = h + _linear(att, params[pre + "attention.output.dense.weight"], params[pre + "attention.output.dense.bias"])
        a = _layer_norm(h, params[pre + "layernorm_after.weight"], params[pre + "layernorm_after.bias"], eps)
        a = F.gelu(_linear(a, params[pre + "intermediate.dense.weight"], params[pre + "intermediate.dense.bias"]))
        h = h + _linear(a, params[pre + "output.dense.weight"], params[pre + "output.dense.bias"])
    cls_out = _layer_norm(h.reshape(g, b, t, hid)[:, :, 0], params["vit.layernorm.weight"],
                          params["vit.layernorm.bias"], eps)  # (G, B, H)
    return _linear(cls_out, params["classifier.weight"], params["classifier.bias"])


# ------------------------------------------------------------------------------------------------ batches

def _stack_states(states: list[dict], n_labels: int) -> dict[str, torch.Tensor]:
    """Stack G states along a new model axis; classifier heads are zero-padded to ``n_labels`` rows."""
    out = {}
    for key in states[0]:
        ts = [s[key].to(torch.float32) for s in states]
        if key.startswith("classifier."):
            ts = [F.pad(t, (0, 0) * (t.ndim - 1) + (0, n_labels - t.shape[0])) for t in ts]
        out[key] = torch.stack(ts)
    return out


def _unstack_states(params: dict[str, torch.Tensor], n_classes: list[int]) -> list[dict]:
    return [{k: (v[i, :n_classes[i]] if k.startswith("classifier.") else v[i]).detach().clone()
             for k, v in params.items()} for i in range(len(n_classes))]


def pad_examples(arrays: list[np.ndarray], fill) -> torch.Tensor:
    """G arrays (n_g, ...) as one tensor (G, max n_g, ...), the missing rows set to ``fill``."""
    n = max(len(a) for a in arrays)
    out = np.full((len(arrays), n, *arrays[0].shape[1:]), fill, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return torch.from_numpy(out)


def class_mask(n_classes: list[int], n_labels: int) -> torch.Tensor:
    """(G, 1, n_labels): 0 for a model's own classes, -inf for padded head rows."""
    m = torch.full((len(n_classes), 1, n_labels), float("-inf"))
    for i, c in enumerate(n_classes):
        m[i, :, :int(c)] = 0.0
    return m


def train_models(states: list[dict], tasks: list[str], lrs, epochs, weight_decays, seeds,
                 config: VitSettings, progress=None) -> tuple[list[dict], list[float]]:
    """Train G models at once with AdamW, each on its own task's train split and hyperparameters.

    Each model takes ``ceil(epochs * n_train / batch_size)`` steps of ``batch_size`` examples drawn from
    its own shuffled epochs (seeded by its ``seed``); models that finish early stop updating (lr 0).
    Weight decay applies to tensors with >= 2 dimensions. Returns the trained states (heads cut back to
    the task's classes) and each model's mean training loss over its last epoch. Runs on ``TRAIN_THREADS``
    threads, so the bits do not depend on the caller's thread setting. ``progress``: anything with
    ``update(1)`` and ``reset(total)`` (a tqdm bar), reset to the group's step count and updated after every
    step; it only counts.
    """
    with compute_settings(TRAIN_THREADS):
        return _train_models(states, tasks, lrs, epochs, weight_decays, seeds, config, progress)


def _train_models(states, tasks, lrs, epochs, weight_decays, seeds, config, progress=None):
    g, bs = len(states), config.batch_size
    tks = [parse_task(t) for t in tasks]
    data = [task_data(t, "train", config.test_fraction, config.split_seed) for t in tks]
    n_classes = [t.n_classes for t in tks]
    n_labels = max(n_classes)
    xs, ys = pad_examples([d[0] for d in data], 0.0), pad_examples([d[1] for d in data], 0)
    steps = [int(math.ceil(e * len(d[1]) / bs)) for e, d in zip(epochs, data)]
    order = []  # per model: the example index of every step's batch, from concatenated shuffled epochs
    for (_, y), s, seed in zip(data, steps, seeds):
        rng = np.random.default_rng(int(seed))
        n_perm = int(math.ceil(s * bs / len(y)))
        order.append(np.concatenate([rng.permutation(len(y)) for _ in range(n_perm)])[:s * bs].reshape(s, bs))
    params = {k: v.requires_grad_() for k, v in _stack_states(states, n_labels).items()}
    m1 = {k: torch.zeros_like(v) for k, v in params.items()}
    m2 = {k: torch.zeros_like(v) for k, v in params.items()}
    mask = class_mask(n_classes, n_labels)
    wd = torch.tensor(weight_decays, dtype=torch.float32)
    b1, b2, adam_eps = 0.9, 0.999, 1e-8
    losses = [[] for _ in range(g)]
    gi = torch.arange(g).unsqueeze(1)
    if progress is not None:
        progress.reset(total=max(steps))
    for step in range(max(steps)):
        idx = torch.from_numpy(np.stack([o[min(step, len(o) - 1)] for o in order]))  # (G, B)
        logits = vit_logits(params, xs[gi, idx], config) + mask  # (G, B, n_labels)
        per_model = F.cross_entropy(logits.reshape(g * bs, n_labels), ys[gi, idx].reshape(-1),
                                    reduction="none").reshape(g, bs).mean(dim=1)
        for k in params:
            params[k].grad = None
        per_model.sum().backward()
        lr = torch.tensor([warmup_cosine(step, s, l, config.warmup_frac) for s, l in zip(steps, lrs)])
        with torch.no_grad():
            for k, p in params.items():
                shape = (g,) + (1,) * (p.ndim - 1)
                m1[k].mul_(b1).add_(p.grad, alpha=1 - b1)
                m2[k].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                t = step + 1  # every model is active from step 0, so its Adam step count is step + 1
                update = (m1[k] / (1 - b1 ** t)) / ((m2[k] / (1 - b2 ** t)).sqrt() + adam_eps)
                if p.ndim >= 3:  # matrices (G, ., .) and embeddings: decoupled weight decay
                    update = update + wd.view(shape) * p
                p.sub_(lr.view(shape) * update)
        step_loss = per_model.detach().tolist()
        for i, s in enumerate(steps):
            if s - int(math.ceil(len(data[i][1]) / bs)) <= step < s:  # the model's last epoch
                losses[i].append(step_loss[i])
        if progress is not None:
            progress.update(1)
    return _unstack_states(params, n_classes), [float(np.mean(v)) for v in losses]


@torch.no_grad()
def stacked_accuracy(params: dict[str, torch.Tensor], images: list[np.ndarray], labels: list[np.ndarray], n_classes,
                     config: VitSettings, chunk: int | None = None) -> np.ndarray:
    """Accuracy (float64 (G,)) of G stacked models (``params`` (G, ...), heads zero-padded to a common
    ``n_labels`` rows), model g on ``images[g]`` (n_g, 8, 8) / ``labels[g]`` (n_g,): the examples padded to the
    longest (label -1, never counted), the logits of head rows beyond ``n_classes[g]`` set to -inf, ``chunk``
    examples per forward (None: all at once). The one ViT accuracy: the population's records
    (:func:`evaluate_states`), merging's and the adaptation runs' scores all come from here. Runs under the
    caller's compute settings."""
    xs, ys = pad_examples(images, 0.0), pad_examples(labels, -1)                    # (G, m, 8, 8), (G, m)
    mask = class_mask(n_classes, params["classifier.weight"].shape[1])              # (G, 1, n_labels)
    step = max(1, xs.shape[1] if chunk is None else int(chunk))
    correct = torch.zeros(len(labels), dtype=torch.float64)
    for i in range(0, xs.shape[1], step):
        pred = (vit_logits(params, xs[:, i:i + step], config) + mask).argmax(-1)    # (G, chunk)
        correct += (pred == ys[:, i:i + step]).sum(1).double()
    return (correct / torch.tensor([len(y) for y in labels], dtype=torch.float64)).numpy()


def evaluate_states(states: list[dict], tasks: list[str], config: VitSettings, split: str = "test",
                    chunk: int = 32, sample: int | None = None) -> np.ndarray:
    """Accuracy of each state on its own task's ``split`` (float64 (G,)): :func:`stacked_accuracy` of ``chunk``
    models per forward, on ``TRAIN_THREADS`` threads (the same logits, bit for bit, as when the records were
    written). ``sample``: only :func:`uws_core.zoo.vit_tasks.train_sample_indices` ``(n, sample, task)`` of the
    split's n examples (merging's ``"val"``; None: the whole split)."""
    if len(states) != len(tasks):
        raise ValueError(f"{len(states)} states but {len(tasks)} tasks")
    out = np.zeros(len(states))
    with compute_settings(TRAIN_THREADS), torch.no_grad():
        for i0 in range(0, len(states), chunk):
            sts, names = states[i0:i0 + chunk], tasks[i0:i0 + chunk]
            tks = [parse_task(t) for t in names]
            for s, t in zip(sts, tks):
                if s["classifier.weight"].shape[0] != t.n_classes:
                    raise ValueError(f"a state with a {s['classifier.weight'].shape[0]}-class head cannot be "
                                     f"evaluated on task {t.name!r} ({t.n_classes} classes)")
            data = [task_data(t, split, config.test_fraction, config.split_seed) for t in tks]
            if sample is not None:  # seeded by the task name as the caller wrote it
                data = [(x[idx], y[idx]) for (x, y), name in zip(data, names)
                        for idx in [train_sample_indices(len(y), sample, name)]]
            n_classes = [t.n_classes for t in tks]
            out[i0:i0 + len(sts)] = stacked_accuracy(_stack_states(sts, max(n_classes)), [d[0] for d in data],
                                                     [d[1] for d in data], n_classes, config)
    return out


# ------------------------------------------------------------------------------------------------ build
