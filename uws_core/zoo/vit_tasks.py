"""Image classification tasks on scikit-learn's handwritten digits, for the laptop-scale ViT population.

The public ViTs of the paper are fine-tunes of one pretrained ``google/vit-base-patch16-224`` on many data
sets, each with its own label set. Here a *task* is one **label map** (which digits are kept and which class
each gets: all ten digits, a subset, a binary question such as even/odd or 3-vs-8) crossed with one **domain
transform** of the images (rotation, inversion, noise, blur, translation, ...). Both are named, so a task is
a string ``"labels+transform"`` (``"even_odd+rot90"``; ``"digits10"`` when the transform is ``"none"``).

Data: the 1797 8x8 images of :func:`sklearn.datasets.load_digits` (bundled with scikit-learn, no download),
scaled to [0, 1], split once into fixed, disjoint train / test indices (stratified, seeded). Every task uses
the train indices for training and the test indices for its held-out accuracy; random transforms (noise,
jitter, pixel dropout) draw from a generator seeded by the task and the split, so every call returns the
same images.

The plans of the population built by :mod:`uws_core.zoo.vit_zoo` live here too: :func:`finetune_plan` (74
fine-tunes of the base in five families: class subsets, binary questions, domain shifts, label maps under
shifts, hyperparameter sweeps) and :func:`scratch_plan` (models trained from their own random init on tasks
of that plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from uws_core.linalg.numerics import stable_seed_63 as stable_seed  # the ViT tasks' 63-bit seeds
from uws_core.linalg.numerics import stable_seed_63_masked
from scipy import ndimage

__all__ = ["LABEL_MAPS", "TRANSFORMS", "VitTask", "load_digit_images", "split_indices", "apply_transform",
           "parse_task", "task_name", "task_data", "train_sample_indices", "held_out_split", "stable_seed",
           "finetune_plan", "scratch_plan"]

IMAGE_SIZE = 8




def _subset(*digits: int) -> tuple[int, ...]:
    """Label map keeping ``digits`` (class i = i-th listed digit), dropping the others (-1)."""
    return tuple(digits.index(d) if d in digits else -1 for d in range(10))


def _binary(positive) -> tuple[int, ...]:
    return tuple(int(d in positive) for d in range(10))


# name -> label of each digit 0..9 (-1: images of that digit are not part of the task)
LABEL_MAPS: dict[str, tuple[int, ...]] = {
    "digits10": tuple(range(10)),
    "low5": _subset(0, 1, 2, 3, 4), "high5": _subset(5, 6, 7, 8, 9),
    "even5": _subset(0, 2, 4, 6, 8), "odd5": _subset(1, 3, 5, 7, 9),
    "c012": _subset(0, 1, 2), "c347": _subset(3, 4, 7), "c5689": _subset(5, 6, 8, 9),
    "c1279": _subset(1, 2, 7, 9), "c02358": _subset(0, 2, 3, 5, 8), "c146": _subset(1, 4, 6),
    "c0123456": _subset(0, 1, 2, 3, 4, 5, 6), "c3579": _subset(3, 5, 7, 9),
    "even_odd": _binary({1, 3, 5, 7, 9}), "gt4": _binary({5, 6, 7, 8, 9}), "prime": _binary({2, 3, 5, 7}),
    "loop": _binary({0, 6, 8, 9}), "mod3": tuple(d % 3 for d in range(10)),
    "lt3_mid_gt6": tuple(0 if d < 3 else (2 if d > 6 else 1) for d in range(10)),
    "3v8": _subset(3, 8), "1v7": _subset(1, 7), "4v9": _subset(4, 9), "5v6": _subset(5, 6),
    "0v6": _subset(0, 6), "2v7": _subset(2, 7), "3v5": _subset(3, 5), "0v9": _subset(0, 9),
}


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate (n, 8, 8) images by (dy, dx) pixels, filling with 0 (no wrap-around)."""
    return ndimage.shift(x, (0, dy, dx), order=0, mode="constant", cval=0.0)


def _jitter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Translate each image by its own random (dy, dx) in {-1, 0, 1}^2."""
    out = np.empty_like(x)
    offsets = rng.integers(-1, 2, size=(len(x), 2))
    for i, (dy, dx) in enumerate(offsets):
        out[i] = _shift(x[i:i + 1], int(dy), int(dx))[0]
    return out


def _pixelate(x: np.ndarray) -> np.ndarray:
    """2x2 block means, upsampled back to 8x8."""
    n = len(x)
    blocks = x.reshape(n, 4, 2, 4, 2).mean(axis=(2, 4))  # (n, 4, 4)
    return blocks.repeat(2, axis=1).repeat(2, axis=2)


# name -> f(images (n, 8, 8) in [0, 1], rng) -> images (n, 8, 8); outputs are clipped to [0, 1]
TRANSFORMS = {
    "none": lambda x, rng: x,
    "rot90": lambda x, rng: np.rot90(x, 1, axes=(1, 2)),
    "rot180": lambda x, rng: np.rot90(x, 2, axes=(1, 2)),
    "rot270": lambda x, rng: np.rot90(x, 3, axes=(1, 2)),
    "flip_lr": lambda x, rng: x[:, :, ::-1],
    "flip_ud": lambda x, rng: x[:, ::-1, :],
    "transpose": lambda x, rng: x.transpose(0, 2, 1),
    "invert": lambda x, rng: 1.0 - x,
    "noise0.2": lambda x, rng: x + 0.2 * rng.standard_normal(x.shape),
    "noise0.4": lambda x, rng: x + 0.4 * rng.standard_normal(x.shape),
    "blur0.7": lambda x, rng: ndimage.gaussian_filter(x, sigma=(0, 0.7, 0.7), mode="constant"),
    "blur1.2": lambda x, rng: ndimage.gaussian_filter(x, sigma=(0, 1.2, 1.2), mode="constant"),
    "shift_right": lambda x, rng: _shift(x, 0, 1),
    "shift_down": lambda x, rng: _shift(x, 1, 0),
    "shift_upleft": lambda x, rng: _shift(x, -1, -1),
    "jitter": lambda x, rng: _jitter(x, rng),
    "contrast0.4": lambda x, rng: 0.3 + 0.4 * x,
    "gamma0.4": lambda x, rng: x ** 0.4,
    "occlude_top": lambda x, rng: np.concatenate([np.zeros_like(x[:, :3]), x[:, 3:]], axis=1),
    "pixelate": lambda x, rng: _pixelate(x),
    "dropout0.3": lambda x, rng: x * (rng.random(x.shape) >= 0.3),
}


@dataclass(frozen=True)
class VitTask:
    """One task: a label map and a domain transform (see the module docstring)."""

    labels: str
    transform: str = "none"

    def __post_init__(self):
        if self.labels not in LABEL_MAPS:
            raise KeyError(f"unknown label map {self.labels!r}; known: {sorted(LABEL_MAPS)}")
        if self.transform not in TRANSFORMS:
            raise KeyError(f"unknown transform {self.transform!r}; known: {sorted(TRANSFORMS)}")

    @property
    def name(self) -> str:
        return task_name(self.labels, self.transform)

    @property
    def label_map(self) -> tuple[int, ...]:
        return LABEL_MAPS[self.labels]

    @property
    def n_classes(self) -> int:
        return max(self.label_map) + 1


def task_name(labels: str, transform: str = "none") -> str:
    """``"labels+transform"``, or just ``"labels"`` for the untransformed images."""
    return labels if transform == "none" else f"{labels}+{transform}"


def parse_task(name: str) -> VitTask:
    """Inverse of :func:`task_name`; unknown parts raise KeyError naming them."""
    labels, _, transform = name.partition("+")
    return VitTask(labels, transform or "none")


@lru_cache(maxsize=4)
def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digit images as float32 (n, 8, 8) in [0, 1] and their labels int64 (n,).

    Read-only arrays (cached): copy before modifying.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@lru_cache(maxsize=8)
def split_indices(test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed disjoint (train, test) indices into :func:`load_digit_images`, stratified by digit, sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    _, y = load_digit_images()
    rng = np.random.default_rng(seed)
    test = []
    for d in range(10):
        idx = np.flatnonzero(y == d)
        test.append(rng.choice(idx, size=int(round(test_fraction * len(idx))), replace=False))
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    train.setflags(write=False)
    test.setflags(write=False)
    return train, test


def apply_transform(name: str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Apply the named transform to (n, 8, 8) images in [0, 1]; float32 output clipped to [0, 1]."""
    if name not in TRANSFORMS:
        raise KeyError(f"unknown transform {name!r}; known: {sorted(TRANSFORMS)}")
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must be (n, {IMAGE_SIZE}, {IMAGE_SIZE}), got {x.shape}")
    out = TRANSFORMS[name](x, np.random.default_rng(seed))
    return np.clip(np.ascontiguousarray(out), 0.0, 1.0).astype(np.float32)


def task_data(task: VitTask | str, split: str = "train", test_fraction: float = 0.3,
              split_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 (n, 8, 8) and class labels int64 (n,) of one task on one split.

    Only the digits the task's label map keeps are returned; random transforms are seeded by the task name
    and the split, so the same call always returns the same arrays (cached, read-only).
    """
    task = parse_task(task) if isinstance(task, str) else task
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _task_data(task, split, float(test_fraction), int(split_seed))


@lru_cache(maxsize=512)
def _task_data(task: VitTask, split: str, test_fraction: float, split_seed: int):
    x, y = load_digit_images()
    idx = split_indices(test_fraction, split_seed)[0 if split == "train" else 1]
    lab = np.asarray(task.label_map)[y[idx]]
    keep = lab >= 0
    images = apply_transform(task.transform, x[idx][keep], seed=stable_seed(task.name, split, split_seed))
    labels = lab[keep].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


# ------------------------------------------------------------------------------------- validation subsets
# The ViT tasks have only train / test. Two experiments choose hyperparameters on a subset of the train split,
# each its own way (each keeps the examples its results were computed on):

def train_sample_indices(n_train: int, n: int, task: str) -> np.ndarray:
    """A fixed sample of ``min(n, n_train)`` indices of a task's train split, drawn without replacement from a
    generator seeded by the task name (as passed), sorted. Examples the fine-tunes were **trained on** (not held
    out): merging's ``"val"`` split (:func:`uws_core.experiments.merging.vit_accuracy`), used only to choose merge
    hyperparameters."""
    rng = np.random.default_rng(stable_seed_63_masked("vit-validation", task))
    return np.sort(rng.choice(n_train, size=min(n, n_train), replace=False))


def held_out_split(task: str, config, val_fraction: float = 0.2, n_train: int | None = None) -> dict:
    """Train / val / test images (n, 8, 8) and labels of one task, with ``val`` **held out** of training: a
    permutation of the train split seeded by the task name, its first ``round(val_fraction * n)`` examples are
    ``val``, the rest (their first ``n_train`` when given) ``train``; ``test`` is the task's test split. The
    adaptation runs' split (:mod:`uws_core.experiments.adaptation_tasks`). ``config`` gives ``test_fraction``
    and ``split_seed`` (a :class:`uws_core.zoo.vit_zoo.VitZooConfig`)."""
    x, y = task_data(task, "train", config.test_fraction, config.split_seed)
    perm = np.random.default_rng(stable_seed(task, "adaptation-val")).permutation(len(y))
    n_val = int(round(val_fraction * len(y)))
    tr = np.sort(perm[n_val:][:n_train])
    va = np.sort(perm[:n_val])
    if len(tr) == 0 or len(va) == 0:
        raise ValueError(f"task {task!r}: {len(tr)} train / {len(va)} val examples after the split")
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]),
            "test": task_data(task, "test", config.test_fraction, config.split_seed)}


# ------------------------------------------------------------------------------------------------ plans

_MIXED = [("even_odd", "rot90"), ("gt4", "invert"), ("3v8", "noise0.4"), ("low5", "blur1.2"), ("prime", "flip_lr"),
          ("loop", "shift_down"), ("mod3", "pixelate"), ("high5", "transpose"), ("1v7", "rot180"),
          ("c347", "jitter"), ("even5", "contrast0.4"), ("4v9", "dropout0.3")]
_SUBSETS = ["low5", "high5", "even5", "odd5", "c012", "c347", "c5689", "c1279", "c02358", "c146", "c0123456", "c3579"]
_BINARY = ["even_odd", "gt4", "prime", "loop", "mod3", "lt3_mid_gt6", "3v8", "1v7", "4v9", "5v6", "0v6", "2v7",
           "3v5", "0v9"]
_DOMAINS = ["rot90", "rot180", "rot270", "flip_lr", "flip_ud", "transpose", "invert", "noise0.2", "noise0.4",
            "blur0.7", "blur1.2", "shift_right", "shift_down", "shift_upleft", "jitter", "contrast0.4", "gamma0.4",
            "occlude_top", "pixelate", "dropout0.3"]
# (lr multiplier, epochs multiplier, weight decay or None for the default, extra seed offset)
_SWEEP = [(0.2, 1, None, 0), (2.0, 1, None, 0), (6.0, 1, None, 0), (1, 0.3, None, 0), (1, 2, None, 0),
          (1, 1, 0.0, 0), (1, 1, 0.5, 0), (1, 1, None, 1)]


def finetune_plan(config) -> list[dict]:
    """The fine-tunes of the base: one dict per model (name, task, family, lr, epochs, weight_decay, seed,
    group), from the defaults of ``config`` (a :class:`uws_core.zoo.vit_zoo.VitZooConfig`).

    Families: ``subset`` (12 class subsets), ``binary`` (14 binary / grouping tasks), ``domain`` (all ten
    digits under 20 transforms), ``mixed`` (12 label maps x transforms), ``sweep`` (8 hyperparameter
    settings on each of two tasks: learning rate, epochs, weight decay, seed). 74 in all; tasks are distinct
    except within the sweeps, whose hyperparameters differ.
    """
    c = config
    rows = [("subset", task_name(t), 1, 1, None, 0) for t in _SUBSETS]
    rows += [("binary", task_name(t), 1, 1, None, 0) for t in _BINARY]
    rows += [("domain", task_name("digits10", t), 1, 1, None, 0) for t in _DOMAINS]
    rows += [("mixed", task_name(*lt), 1, 1, None, 0) for lt in _MIXED]
    rows += [("sweep", t, *s) for t in ("digits10", "gt4+noise0.2") for s in _SWEEP]
    plan = []
    for i, (family, task, lr_mul, ep_mul, wd, extra) in enumerate(rows):
        lr, epochs = c.finetune_lr * lr_mul, max(1, int(round(c.finetune_epochs * ep_mul)))
        wd = c.weight_decay if wd is None else wd
        name = f"ft{i:03d}_{task}" + (f"_lr{lr:.0e}_ep{epochs}_wd{wd:g}_s{extra}" if family == "sweep" else "")
        plan.append(dict(name=name, kind="finetune", family=family, task=task, lr=lr, epochs=epochs,
                         weight_decay=wd, seed=c.seed + 1000 + i))
    plan = plan if c.n_finetunes is None else plan[:c.n_finetunes]
    for i, p in enumerate(plan):
        p["group"] = "unseen" if c.unseen_every and i % c.unseen_every == c.unseen_every - 1 else "fit"
    return plan


_SCRATCH_TASKS = ["digits10", "even_odd", "gt4", "low5", "digits10+rot90", "digits10+invert", "3v8", "mod3",
                  "high5", "loop", "digits10+blur1.2", "digits10+noise0.4", "even_odd+rot90", "c347", "prime",
                  "digits10+shift_down"]


def scratch_plan(config) -> list[dict]:
    """Models trained from their own random init (no shared base) on tasks of the fine-tune plan."""
    out = []
    for j in range(config.n_scratch):
        task = _SCRATCH_TASKS[j % len(_SCRATCH_TASKS)]
        out.append(dict(name=f"scratch{j:03d}_{task}", kind="scratch", family="scratch", task=task,
                        lr=config.scratch_lr, epochs=config.scratch_epochs, weight_decay=config.weight_decay,
                        seed=config.seed + 3000 + j, group=""))
    return out
