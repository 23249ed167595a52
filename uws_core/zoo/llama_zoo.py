"""The laptop-scale LLaMA population: a small ``LlamaForCausalLM`` base and many full fine-tunes, cached.

It mirrors the paper's 50 full fine-tunes of Llama-3-8B (instruction, domain, language and reward models) with
a base of the same architecture at toy size (grouped-query attention 4 : 2 heads, RoPE with theta 500000,
SwiGLU MLP gate/up/down, RMSNorm, untied head; default hidden 64, 2 layers, MLP 160), trained by our code:

1. the base is instruction-tuned on the generated tasks of :mod:`uws_core.zoo.tasks` (canonical formats plus part
   of the other format combinations, :class:`uws_core.zoo.tasks.BaseMixture`), in English only, and cached on its
   own (``<cache>/llama_base_<hash of the base's fields>/``, :func:`trained_base`); the default configs' bases
   ship with the repository (:mod:`uws_core.zoo.pretrained`: copied, not trained, bit for bit what this code
   trains; ``UWS_TRAIN_BASES=1`` trains them);
2. ``n_finetunes`` full fine-tunes (every parameter, embeddings and norms included) start from it, each on
   the tasks of :func:`uws_core.zoo.llama_tasks.finetune_plan` (instruction mix, one domain, a mix in a remapped
   alphabet, or verifier tasks), with its own seed, learning rate and step count; all are trained together
   by a batched functional forward (:func:`llama_logits`, equal to transformers' forward to float32
   round-off) and Adam on stacked parameters;
3. every model is written with ``LlamaForCausalLM.save_pretrained`` (``model.safetensors`` + config.json,
   keys ``model.layers.0.self_attn.q_proj.weight``, ``model.layers.0.mlp.gate_proj.weight``, ...), read by
   :class:`uws_core.weights.checkpoints.CheckpointSet`.

One fine-tune in every block of ``unseen_every`` is held out of any basis (records column ``group`` =
``unseen``, else ``fit``; :func:`unseen_finetune`). The build is deterministic (one thread, deterministic
kernels, seeds from the config) and cached by :mod:`uws_core.weights.cache` in ``<cache>/llama/<config digest>``.

This module holds the population's config (:class:`LlamaZooConfig`, whose digest names the cache), the
fine-tune plan, the build and cache (:func:`build_llama_population`) and :class:`LlamaPopulation`; the model
itself (transformers config, checkpoint I/O, :func:`llama_logits`, batched training and evaluation) lives in
:mod:`uws_core.zoo.llama_model`, whose public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from uws_core.zoo import llama_tasks, pretrained, tinylm
from uws_core.zoo import progress as progress_bars
from uws_core.weights.cache import build_cached, config_digest, copy_entry, default_cache_dir, read_info
from uws_core.linalg.numerics import compute_settings
from uws_core.zoo.llama_model import (MATRIX_TYPES, evaluate_models, init_state, seeded_llama_model,
                                  llama_config, llama_logits, load_state, save_llama, train_models)
from uws_core.zoo.tasks import BaseMixture, CharTokenizer, make_tasks

__all__ = ["LlamaZooConfig", "LlamaPopulation", "build_llama_population", "base_key", "trained_base",
           "llama_config", "init_state", "llama_logits", "train_models", "evaluate_models", "save_llama",
           "load_state", "unseen_finetune", "MATRIX_TYPES"]

log = logging.getLogger(__name__)
FORMAT_VERSION = 1  # bump when the files or the training code (uws_core.zoo.llama_model) change meaning
RECORD_COLUMNS = ["name", "task_group", "domain", "language", "tasks", "n_tasks", "seed", "lr", "steps",
                  "final_train_loss", "test_loss", "test_acc", "base_test_loss", "base_test_acc", "n_test",
                  "group", "dir"]


@dataclass(frozen=True)
class LlamaZooConfig:
    """Every setting of the population (its digest names the cache directory)."""

    # --- tasks (uws_core.zoo.tasks): a pool of tasks with disjoint train / val / test inputs
    n_tasks: int = 54
    task_seed: int = 0
    n_train: int = 128
    n_val: int = 16
    n_test: int = 32
    # --- base: LlamaForCausalLM, GQA 4 : 2 (32 : 8 in Llama-3-8B), SwiGLU, RMSNorm, untied head
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 160  # 2.5 x hidden (3.5 x in Llama-3-8B)
    rope_theta: float = 500000.0
    base_seed: int = 0
    base_steps: int = 700
    base_batch_size: int = 64
    base_lr: float = 3e-3
    base_format_fraction: float = 0.5
    # --- full fine-tunes (uws_core.zoo.llama_tasks.finetune_plan)
    n_finetunes: int = 40
    tasks_per_model: int = 4
    languages: tuple = ("xa", "xb", "xc")
    lrs: tuple = (1e-3, 2e-3, 3e-3)
    steps: tuple = (100, 120)
    reward_steps: tuple = (300,)  # the format judges (reward models) learn late: more steps
    batch_size: int = 8
    warmup_frac: float = 0.1
    weight_decay: float = 0.0
    seed: int = 0
    unseen_every: int = 8  # one fine-tune in every block of 8 is "unseen" (see unseen_finetune)
    # --- compute: one thread gives the same bits whatever the machine's core count
    num_threads: int = 1

    def __post_init__(self):
        head_dim = self.hidden_size // self.num_heads
        checks = {"hidden_size": self.hidden_size % self.num_heads == 0 and head_dim % 2 == 0,  # RoPE pairs
                  "num_heads": self.num_heads % self.num_kv_heads == 0,
                  "n_finetunes": self.n_finetunes >= 2, "unseen_every": self.unseen_every >= 2,
                  "batch_size": 1 <= self.batch_size <= self.n_train * self.tasks_per_model,
                  "num_threads": self.num_threads >= 1, "steps": len(self.steps) > 0 and min(self.steps) >= 1,
                  "reward_steps": len(self.reward_steps) == 0 or min(self.reward_steps) >= 1}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"LlamaZooConfig: invalid {name}={getattr(self, name)!r}")
        for name in ("languages", "lrs", "steps", "reward_steps"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def tiny(cls, **overrides) -> "LlamaZooConfig":
        """6 fine-tunes of a 1-layer, 16-wide base: builds in a few seconds (tests)."""
        small = dict(n_tasks=27, n_train=16, n_val=4, n_test=8, hidden_size=16, num_layers=1, num_heads=2,
                     num_kv_heads=1, intermediate_size=40, base_steps=20, base_batch_size=16, n_finetunes=6,
                     tasks_per_model=2, steps=(6, 8), reward_steps=(10,), batch_size=4, unseen_every=3)
        return cls(**{**small, **overrides})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def digest(self) -> str:
        """12 hex digits naming the cache directory (:func:`uws_core.weights.cache.config_digest`)."""
        return config_digest(self.to_dict(), FORMAT_VERSION)


# ---------------------------------------------------------------------------------------------- population
def unseen_finetune(j: int, every: int) -> bool:
    """Whether fine-tune j is held out: one per block of ``every`` consecutive fine-tunes, at position
    ``block % every`` inside block number ``block``, so the held-out models rotate through the task groups
    (the plan cycles through 4 groups; "every 8th" would hold out one group only)."""
    return j % every == (j // every) % every


def _make_tasks(cfg: LlamaZooConfig):
    return make_tasks(cfg.n_tasks, cfg.task_seed, cfg.n_train, cfg.n_val, cfg.n_test)


def _plan(cfg: LlamaZooConfig, tasks) -> list[dict]:
    return llama_tasks.finetune_plan(tasks, cfg.n_finetunes, cfg.tasks_per_model, cfg.languages, cfg.lrs,
                                     cfg.steps, cfg.seed, cfg.reward_steps)


def _examples(job: dict, by_name: dict, split: str) -> list:
    """The pooled ``split`` examples of one fine-tune's tasks, in its language (verifier form for reward)."""
    return llama_tasks.examples_of([by_name[t] for t in job["tasks"]], split, job["language"],
                                   verify=job["task_group"] == "reward")


class LlamaPopulation:
    """A built population on disk, with its tasks and a batched evaluator.

    Attributes
    ----------
    root : Path            ``base/`` and ``finetunes/<name>/`` (each config.json + model.safetensors), records.csv
    records : DataFrame    one row per fine-tune, columns ``RECORD_COLUMNS`` (tasks joined by "+")
    info : dict            what the build returned (timings, versions, base loss and accuracy)
    """

    def __init__(self, root: Path, config: LlamaZooConfig):
        self.root, self.config = Path(root), config
        self.records = pd.read_csv(self.root / "records.csv", keep_default_na=False)
        self.info = read_info(self.root)
        self.tokenizer = CharTokenizer()
        self._tasks = {t.name: t for t in _make_tasks(config)}
        self._jobs = {r["name"]: dict(r, tasks=r["tasks"].split("+")) for r in self.records.to_dict("records")}

    def __repr__(self):
        return f"LlamaPopulation({len(self.records)} fine-tunes, root={str(self.root)!r})"

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def dirs(self) -> list[Path]:
        """Fine-tune directories in records order."""
        return [self.root / d for d in self.records["dir"]]

    def examples(self, name: str, split: str = "test") -> list:
        """One fine-tune's pooled examples of a split, in its language (verifier form for reward models)."""
        if name not in self._jobs:
            raise KeyError(f"population {self.root.name} has no fine-tune {name!r}")
        return _examples(self._jobs[name], self._tasks, split)

    def evaluate(self, states: list[dict], names: list[str], split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """Held-out loss and accuracy of ``states[i]`` on fine-tune ``names[i]``'s examples (batched)."""
        with compute_settings(self.config.num_threads):
            return evaluate_models(states, [self.examples(n, split) for n in names], self.config, tok=self.tokenizer)


#: the config fields that determine the base model (populations differing only in the others share it)
BASE_FIELDS = ("n_tasks", "task_seed", "n_train", "n_val", "n_test", "hidden_size", "num_layers", "num_heads",
               "num_kv_heads", "intermediate_size", "rope_theta", "base_seed", "base_steps", "base_batch_size",
               "base_lr", "base_format_fraction", "num_threads")


def base_key(cfg: LlamaZooConfig) -> str:
    """The base model's cache name: :func:`uws_core.weights.cache.config_digest` of :data:`BASE_FIELDS`."""
    return config_digest({"what": "llama-base", **{f: getattr(cfg, f) for f in BASE_FIELDS}}, FORMAT_VERSION)


def trained_base(cfg: LlamaZooConfig, cache_root: Path) -> Path:
    """The instruction-tuned base of ``cfg`` in ``<cache_root>/llama_base_<base_key>/`` (config.json +
    model.safetensors), copied from the repository's shipped base of that key (:mod:`uws_core.zoo.pretrained`)
    or trained here: instruction tuning on the canonical formats and part of the other combinations, English
    only (:class:`uws_core.zoo.tasks.BaseMixture`, :func:`uws_core.zoo.tinylm.train_base`)."""
    def train(tmp: Path) -> dict:
        t0 = time.perf_counter()
        tok = CharTokenizer()
        model = seeded_llama_model(cfg, tok.vocab_size, cfg.base_seed)
        mixture = BaseMixture(_make_tasks(cfg), seed=cfg.base_seed, format_fraction=cfg.base_format_fraction)
        with compute_settings(cfg.num_threads), \
                progress_bars.bar(cfg.base_steps, "base steps", level=1) as bar:
            losses = tinylm.train_base(model, mixture, tok, cfg.base_steps, cfg.base_batch_size, cfg.base_lr,
                                       warmup=min(100, cfg.base_steps // 10 + 1), progress=bar)
        save_llama({k: v.detach().clone() for k, v in model.state_dict().items()}, tmp, cfg)
        return {"base_final_train_loss": float(np.mean(losses[-max(1, cfg.base_steps // 10):])),
                "base_train_s": time.perf_counter() - t0}

    return pretrained.shipped_or_trained(cache_root, f"llama_base_{base_key(cfg)}", FORMAT_VERSION, train)


def _build(cfg: LlamaZooConfig, out: Path, cache_root: Path) -> dict:
    timings, t0 = {}, time.perf_counter()
    cpu0 = time.process_time()
    tok = CharTokenizer()
    tasks = _make_tasks(cfg)
    by_name = {t.name: t for t in tasks}
    # --- base: trained once per BASE_FIELDS (or shipped) and read back from its cache, as the LoRA base
    base_root = trained_base(cfg, cache_root)
    base = load_state(base_root)
    base_info = read_info(base_root)
    timings["base_train_s"] = time.perf_counter() - t0
    # --- full fine-tunes, all at once
    t = time.perf_counter()
    plan = _plan(cfg, tasks)
    with progress_bars.bar(max(j["steps"] for j in plan), f"{len(plan)} fine-tunes, steps", level=1) as bar:
        states, final_loss = train_models(base, [_examples(j, by_name, "train") for j in plan],
                                          [j["lr"] for j in plan], [j["steps"] for j in plan],
                                          [j["seed"] for j in plan], cfg, tok, progress=bar)
    timings["finetune_train_s"] = time.perf_counter() - t
    # --- held-out (test split) loss and accuracy of each fine-tune and of the base on the same examples
    t = time.perf_counter()
    tests = [_examples(j, by_name, "test") for j in plan]
    test_loss, test_acc = evaluate_models(states, tests, cfg, tok=tok)
    base_loss, base_acc = evaluate_models([base] * len(plan), tests, cfg, tok=tok)
    timings["eval_s"] = time.perf_counter() - t
    t = time.perf_counter()
    unseen = [unseen_finetune(j, cfg.unseen_every) for j in range(len(plan))]
    records = pd.DataFrame([dict(job, tasks="+".join(job["tasks"]), n_tasks=len(job["tasks"]),
                                 final_train_loss=final_loss[i], test_loss=test_loss[i], test_acc=test_acc[i],
                                 base_test_loss=base_loss[i], base_test_acc=base_acc[i], n_test=len(tests[i]),
                                 group="unseen" if unseen[i] else "fit", dir=f"finetunes/{job['name']}")
                            for i, job in enumerate(plan)])[RECORD_COLUMNS]
    copy_entry(base_root, out / "base")  # the files of the cached base
    for d, st in zip(records["dir"], states):
        save_llama(st, out / d, cfg)
    records.to_csv(out / "records.csv", index=False)
    timings["save_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    timings["total_cpu_s"] = time.process_time() - cpu0
    import transformers

    return {"config": cfg.to_dict(), "digest": cfg.digest(), "format": FORMAT_VERSION, "timings_s": timings,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "vocab_size": tok.vocab_size, "tokenizer_chars": tok.chars,
            "base_final_train_loss": base_info["base_final_train_loss"], "base_key": base_key(cfg),
            "summary": {"n_finetunes": len(plan), "n_unseen": int(sum(unseen)),
                        "mean_test_acc": float(test_acc.mean()), "mean_base_test_acc": float(base_acc.mean())}}


def build_llama_population(config: LlamaZooConfig | None = None,
                           cache_dir: Path | str | None = None) -> LlamaPopulation:
    """Train the base and its full fine-tunes, or read them from the cache when already built.

    Parameters
    ----------
    config : LlamaZooConfig, optional    default ``LlamaZooConfig()`` (40 fine-tunes; about 75 s of CPU, one thread);
                                         ``LlamaZooConfig.tiny()`` for tests
    cache_dir : path, optional           cache root (default :func:`uws_core.weights.cache.default_cache_dir`); the
                                         population lives in ``<root>/llama/<config digest>``
    """
    cfg = config or LlamaZooConfig()
    final = Path(cache_dir or default_cache_dir()) / "llama" / cfg.digest()

    def build(tmp: Path) -> dict:
        with compute_settings(cfg.num_threads):  # transformers' bars off too
            return _build(cfg, tmp, final.parent.parent)

    return LlamaPopulation(build_cached(final, build, FORMAT_VERSION), cfg)
