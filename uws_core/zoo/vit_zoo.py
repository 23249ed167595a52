"""A laptop-scale population of ViTs in transformers' format: one base, many full fine-tunes, untrained
models and models trained from scratch, on the digit tasks of :mod:`uws_core.zoo.vit_tasks`.

It mirrors the structure of the paper's ViT zoo (~470 full fine-tunes of ``google/vit-base-patch16-224``,
each with its own head, many of them hyperparameter sweeps; 500 untrained ViTs) with a small
``ViTForImageClassification`` (8x8 images, 4x4 patches, so 4 patch tokens + CLS; defaults hidden 64,
4 layers, MLP 128). Every model is saved with ``ViTForImageClassification.save_pretrained`` (safetensors,
key names as in ``google/vit-base-patch16-224``, e.g. ``vit.encoder.layer.0.attention.attention.query.weight``)
and read back by :class:`uws_core.weights.checkpoints.CheckpointSet`.

Training is full-parameter AdamW (decay on matrices only, linear warm-up then cosine decay), run for
``group_size`` models at once by a batched functional forward (:func:`vit_logits`, equal to transformers'
forward to float32 round-off; the test checks it), so building all populations takes minutes on 2 cores.
Everything is deterministic from the config's seeds; the result is cached on disk under a hash of the
config (``<repo>/.cache/uws/vit/<hash>``, env ``UWS_CACHE`` overrides the root) by :mod:`uws_core.weights.cache`:
built in a temporary directory, moved in place with a sha256 manifest, so a partial cache is never used.
The base is cached on its own (``<root>/vit_base_<key>``, :func:`trained_base`) and, for the default configs,
shipped with the repository (:mod:`uws_core.zoo.pretrained`), so a fresh clone copies it instead of training it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from uws_core.zoo import pretrained, progress as progress_bars
from uws_core.weights.cache import build_cached, config_digest, copy_entry, default_cache_dir, read_info
from uws_core.zoo.vit_model import (evaluate_states, init_state, load_state, save_vit, train_models, vit_config,
                                vit_logits)
from uws_core.zoo.vit_tasks import finetune_plan, parse_task, scratch_plan, task_data

__all__ = ["VitZooConfig", "VitPopulations", "build_vit_populations", "BASE_FIELDS", "base_key", "trained_base",
           "finetune_plan", "scratch_plan",
           "vit_config", "init_state", "vit_logits", "train_models", "evaluate_states", "save_vit", "load_state",
           "default_cache_dir"]

log = logging.getLogger(__name__)
FORMAT_VERSION = 1  # bump when the training code changes what a config produces


@dataclass(frozen=True)
class VitZooConfig:
    """Everything that determines the populations (its hash names the cache directory).

    The model fields come first: a small ViT (:mod:`uws_core.zoo.vit_model`) on 4 x 4 patches of the 8 x 8 digits
    (16 x 16 patches in ViT-B/16).
    """

    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 128
    patch_size: int = 4
    # --- data and seeds: one held-out split of every task; ``seed`` drives initialisations and minibatches
    test_fraction: float = 0.3
    split_seed: int = 0
    seed: int = 0
    # --- training: the base, then the fine-tunes, untrained copies and from-scratch models of the plan
    batch_size: int = 64
    group_size: int = 16            # models trained together by the batched forward
    warmup_frac: float = 0.1
    base_task: str = "digits10"
    base_epochs: int = 40
    base_lr: float = 2e-3
    weight_decay: float = 0.05
    finetune_lr: float = 5e-4
    finetune_epochs: int = 10
    n_finetunes: int | None = None  # None: the whole plan of :func:`finetune_plan`; else its first n
    n_random_init: int = 64
    n_scratch: int = 16
    scratch_epochs: int = 40
    scratch_lr: float = 2e-3
    unseen_every: int = 8           # every 8th fine-tune is held out of the basis ("unseen", group "unseen")

    @classmethod
    def tiny(cls) -> "VitZooConfig":
        """Seconds-sized preset for tests: hidden 16, 1 layer, 6 fine-tunes, 4 untrained, 2 from scratch."""
        return cls(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, base_epochs=2,
                   finetune_epochs=1, n_finetunes=6, n_random_init=4, n_scratch=2, scratch_epochs=1,
                   group_size=4, unseen_every=3)

    def digest(self) -> str:
        """12 hex digits of the sha256 of the config, the format version and the torch / transformers
        versions (a new initialiser or kernel gives new weights, so it gets a new cache directory)."""
        return config_digest(dataclasses.asdict(self), FORMAT_VERSION)


@dataclass
class VitPopulations:
    """The populations of one config, on disk (see :func:`build_vit_populations`).

    ``records`` has one row per model: name, kind (base / finetune / scratch / random_init), family, task,
    n_classes, lr, epochs, weight_decay, seed, group (fit / unseen for fine-tunes), steps, n_train, n_test,
    final_train_loss, train_acc, test_acc, dir (relative to ``root``).
    """

    root: Path
    config: VitZooConfig
    records: pd.DataFrame
    build_seconds: float = float("nan")

    def dirs(self, kind: str) -> list[Path]:
        if kind not in ("base", "finetune", "scratch", "random_init"):
            raise ValueError(f"unknown kind {kind!r}")
        return [self.root / d for d in self.records.loc[self.records["kind"] == kind, "dir"]]

    @property
    def base_dir(self) -> Path:
        return self.dirs("base")[0]

    @property
    def finetune_dirs(self) -> list[Path]:
        return self.dirs("finetune")

    @property
    def random_init_dirs(self) -> list[Path]:
        return self.dirs("random_init")

    @property
    def scratch_dirs(self) -> list[Path]:
        return self.dirs("scratch")

    def evaluate(self, model, task: str, split: str = "test") -> float:
        """Held-out accuracy of a model directory or a state dict (saved key names) on ``task``."""
        state = load_state(model) if isinstance(model, (str, Path)) else model
        return float(evaluate_states([state], [task], self.config, split)[0])

    def evaluate_many(self, states: list[dict], tasks: list[str], split: str = "test") -> np.ndarray:
        """Accuracies of many state dicts, each on its own task (batched forward)."""
        return evaluate_states(states, tasks, self.config, split)


def _train_jobs(jobs: list[dict], config: VitZooConfig, init, what: str = "models") -> list[tuple[dict, dict]]:
    """Train jobs in groups of ``group_size`` (sorted by step count so a group finishes together); progress bars
    (:mod:`uws_core.zoo.progress`) count the ``what`` models trained and the current group's steps."""
    by_cost = sorted(range(len(jobs)), key=lambda i: -jobs[i]["epochs"] * len(task_data(
        jobs[i]["task"], "train", config.test_fraction, config.split_seed)[1]))
    out: list = [None] * len(jobs)
    with progress_bars.bar(len(jobs), what) as models_bar, progress_bars.bar(None, "steps", level=1) as steps_bar:
        for i0 in range(0, len(jobs), config.group_size):
            grp = [jobs[i] for i in by_cost[i0:i0 + config.group_size]]
            states, loss = train_models([init(j) for j in grp], [j["task"] for j in grp], [j["lr"] for j in grp],
                                        [j["epochs"] for j in grp], [j["weight_decay"] for j in grp],
                                        [j["seed"] for j in grp], config, progress=steps_bar)
            for i, st, lo in zip(by_cost[i0:i0 + config.group_size], states, loss):
                out[i] = (st, {"final_train_loss": lo})
            models_bar.update(len(grp))
    return out


#: the fields of :class:`VitZooConfig` that determine the base (its training reads nothing else)
BASE_FIELDS = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "patch_size", "test_fraction",
               "split_seed", "seed", "batch_size", "warmup_frac", "base_task", "base_epochs", "base_lr",
               "weight_decay")


def base_key(config: VitZooConfig) -> str:
    """The base model's cache name: :func:`uws_core.weights.cache.config_digest` of :data:`BASE_FIELDS`."""
    return config_digest({"what": "vit-base", **{f: getattr(config, f) for f in BASE_FIELDS}}, FORMAT_VERSION)


def _base_job(config: VitZooConfig) -> dict:
    return dict(name="base", kind="base", family="base", task=config.base_task, lr=config.base_lr,
                epochs=config.base_epochs, weight_decay=config.weight_decay, seed=config.seed, group="")


def trained_base(config: VitZooConfig, cache_root: Path) -> Path:
    """The base of ``config`` in ``<cache_root>/vit_base_<base_key>/`` (config.json + model.safetensors), copied
    from the repository's shipped base of that key (:mod:`uws_core.zoo.pretrained`) or trained here: AdamW on
    ``base_task`` for ``base_epochs`` from transformers' initialisation under ``seed`` (:func:`train_models`)."""
    def train(tmp: Path) -> dict:
        t0 = time.perf_counter()
        job = _base_job(config)
        (base, info), = _train_jobs([job], config,
                                    lambda j: init_state(config, parse_task(j["task"]).n_classes, j["seed"]), "base")
        save_vit(base, tmp, config)
        return {"final_train_loss": info["final_train_loss"], "base_train_s": time.perf_counter() - t0}

    return pretrained.shipped_or_trained(cache_root, f"vit_base_{base_key(config)}", FORMAT_VERSION, train)


def _build(config: VitZooConfig, out: Path, cache_root: Path) -> pd.DataFrame:
    base_job = _base_job(config)
    n_cls = lambda job: parse_task(job["task"]).n_classes  # noqa: E731
    # --- base: trained once per BASE_FIELDS (or shipped) and read back from its cache, as the LoRA and Llama bases
    base_root = trained_base(config, cache_root)
    base, info = load_state(base_root), {"final_train_loss": read_info(base_root)["final_train_loss"]}

    def from_base(job):  # the base's weights with a fresh head for the task's classes
        head = init_state(config, n_cls(job), job["seed"])
        return {k: (head[k] if k.startswith("classifier.") else v.clone()) for k, v in base.items()}

    rows, models = [dict(base_job, **info)], [base]
    for plan, init in ((finetune_plan(config), from_base),
                       (scratch_plan(config), lambda j: init_state(config, n_cls(j), j["seed"]))):
        t0 = time.perf_counter()
        for job, (st, info) in zip(plan, _train_jobs(plan, config, init, plan[0]["kind"] if plan else "")):
            rows.append(dict(job, **info))
            models.append(st)
        log.info("%d %s models trained in %.1f s", len(plan), plan[0]["kind"] if plan else "", time.perf_counter() - t0)
    for j in range(config.n_random_init):
        job = dict(name=f"init{j:03d}", kind="random_init", family="random_init", task=config.base_task, lr=0.0,
                   epochs=0, weight_decay=0.0, seed=config.seed + 2000 + j, group="", final_train_loss=float("nan"))
        rows.append(job)
        models.append(init_state(config, n_cls(job), job["seed"]))
    records = pd.DataFrame(rows)
    records["n_classes"] = [parse_task(t).n_classes for t in records["task"]]
    records["steps"] = [int(math.ceil(e * len(task_data(t, "train", config.test_fraction, config.split_seed)[1])
                                      / config.batch_size)) for t, e in zip(records["task"], records["epochs"])]
    for split in ("train", "test"):
        records[f"n_{split}"] = [len(task_data(t, split, config.test_fraction, config.split_seed)[1])
                                 for t in records["task"]]
        records[f"{split}_acc"] = evaluate_states(models, list(records["task"]), config, split)
    records["dir"] = [f"{k}/{n}" for k, n in zip(records["kind"], records["name"])]
    copy_entry(base_root, out / records["dir"][0])  # the files of the cached base (row 0), as the LoRA and Llama builds
    for d, st in zip(records["dir"][1:], models[1:]):
        save_vit(st, out / d, config)
    return records


def _load(path: Path, config: VitZooConfig) -> VitPopulations:
    records = pd.read_csv(path / "records.csv", keep_default_na=False, na_values=[""])
    records["group"] = records["group"].fillna("")
    return VitPopulations(root=path, config=config, records=records,
                          build_seconds=read_info(path).get("build_seconds", float("nan")))


def build_vit_populations(config: VitZooConfig | None = None, cache_dir: Path | str | None = None) -> VitPopulations:
    """Train (or read from the cache) the base, fine-tunes, from-scratch and untrained ViT populations.

    Parameters
    ----------
    config : VitZooConfig, optional
        Default ``VitZooConfig()`` (74 fine-tunes, 64 untrained, 16 from scratch; a few minutes on 2 cores);
        ``VitZooConfig.tiny()`` for tests.
    cache_dir : path, optional
        Cache root (default :func:`default_cache_dir`); the populations live in ``<root>/vit/<digest>``.
        A directory there whose ``complete.json`` manifest (:mod:`uws_core.weights.cache`) is missing or does not
        match its files is deleted and rebuilt.
    """
    config = config or VitZooConfig()
    root = Path(cache_dir or default_cache_dir())
    final = root / "vit" / config.digest()

    def build(tmp: Path) -> dict:
        t0 = time.perf_counter()
        records = _build(config, tmp, root)
        records.to_csv(tmp / "records.csv", index=False)
        (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
        seconds = time.perf_counter() - t0
        log.info("ViT populations built in %.1f s", seconds)
        return {"digest": config.digest(), "n_models": len(records), "build_seconds": seconds}

    return _load(build_cached(final, build, FORMAT_VERSION), config)
