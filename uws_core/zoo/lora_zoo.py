"""The laptop-scale LoRA population: a tiny Mistral base and one PEFT LoRA per task, cached on disk.

This mirrors the paper's largest population (Lots-of-LoRAs: ~500 rank-16 q/k/v adapters of
Mistral-7B-Instruct, one per Natural Instructions task) at a size that builds in a few minutes on a CPU:

1. the base, a small ``MistralForCausalLM`` (GQA 4 : 1), is instruction-tuned on every operation of
   :mod:`uws_core.zoo.tasks` in its canonical format and in part of the format combinations that are no LoRA
   task's (:class:`uws_core.zoo.tasks.BaseMixture`): good at some LoRA tasks, near zero on others. It is
   cached on its own (``<cache>/lora_base_<hash of the base's fields>/``, :func:`trained_base`), so the
   seed replicates of the population (other ``seed``, same ``base_seed``) retrain only the adapters; the
   default config's base ships with the repository (:mod:`uws_core.zoo.pretrained`: copied, not trained,
   bit for bit what this code trains; ``UWS_TRAIN_BASES=1`` trains it);
2. ``n_tasks`` LoRAs (q/k/v, rank 8, alpha 16: the public adapters' scaling alpha / r = 2.0 at half their
   rank) are trained together by :class:`uws_core.zoo.tinylm.MultiLora`; ~39% of them (197 of 500 in the
   public set) start from one shared random A, the others from their own init seeds;
3. every adapter is written with the real ``peft`` library (``save_pretrained``), the base with
   ``transformers`` (``model.safetensors``), so the loaders read them exactly as the public ones.

The population lives in ``<cache>/lora_population_<hash of the config>/`` (cache: the ``cache_dir``
argument, else env ``UWS_CACHE``, else ``<repo>/.cache/uws``). It is built in a temporary directory and
renamed into place with a ``complete.json`` manifest (sha256 of every file, :mod:`uws_core.weights.cache`); a
directory whose manifest is missing or does not match is rebuilt, never used. The key covers the config and ``FORMAT_VERSION``, not
the code: a cache built by different code is used with a logged note (``code_sha256`` differs; the content
fingerprint that ``make populations`` prints beside the committed one is the check that counts).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from uws_core.zoo import tasks as tasks_mod
from uws_core.weights.cache import build_cached, config_digest, copy_entry, default_cache_dir
from uws_core.linalg.numerics import compute_settings, kernel_report
from uws_core.zoo import progress as progress_bars
from uws_core.zoo import pretrained, tinylm

__all__ = ["LoraPopulationConfig", "LoraPopulation", "build_lora_population", "default_cache_dir", "code_digest"]

log = logging.getLogger(__name__)
FORMAT_VERSION = 1  # bump when the files or the training code change meaning: old caches are then ignored
RECORD_COLUMNS = ["adapter", "task", "family", "input_format", "output_format", "param", "canonical", "seed",
                  "init_seed", "shared_init", "steps", "final_train_loss", "base_acc", "adapter_acc", "n_test"]


@dataclass(frozen=True)
class LoraPopulationConfig:
    """Every setting of the population, in one block. The cache key hashes all of them.

    The defaults build 72 adapters (base + LoRAs + evaluation + export) in about 3 minutes on one idle
    CPU core, 4-5 minutes on a 2-core machine busy with other work; ``tiny()`` in a few seconds.
    """

    # --- tasks (uws_core.zoo.tasks): operation x input format x output format, disjoint splits
    n_tasks: int = 72
    task_seed: int = 0
    n_train: int = 256
    n_val: int = 32
    n_test: int = 64
    # --- base: a small MistralForCausalLM, GQA 4 query heads : 1 kv head (32 : 8 in Mistral-7B)
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 1
    intermediate_size: int = 128
    base_seed: int = 0
    base_steps: int = 1500
    base_batch_size: int = 128
    base_lr: float = 3e-3
    base_format_fraction: float = 0.5  # the base also sees this share of the format combinations that
    #                                    are no LoRA task's (tasks.BaseMixture): it knows the format codes
    # --- LoRA on q/k/v; Lots-of-LoRAs uses r=16, alpha=32 on a 4096-wide model; here r=8, alpha=16 (scaling 2)
    lora_r: int = 8
    lora_alpha: float = 16.0
    target_modules: tuple = tinylm.TARGET_MODULES
    lora_steps: int = 200
    lora_batch_per_adapter: int = 8
    lora_lr: float = 1e-2
    shared_init_fraction: float = 197 / 500  # public adapters sharing one identical random A
    seed: int = 0  # adapter minibatch seeds, init seeds and the shared-init group derive from it
    # --- compute: one thread is deterministic, and fastest on a shared 2-core machine
    num_threads: int = 1

    def __post_init__(self):
        checks = {
            "n_tasks": 1 <= self.n_tasks <= len(tasks_mod.task_combinations()),
            "hidden_size": self.hidden_size % self.num_heads == 0,
            "num_heads": self.num_heads % self.num_kv_heads == 0,
            "lora_r": self.lora_r >= 1,
            "shared_init_fraction": 0.0 <= self.shared_init_fraction <= 1.0,
            "target_modules": 0 < len(self.target_modules) and set(self.target_modules) <= {
                "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
            "lora_batch_per_adapter": 1 <= self.lora_batch_per_adapter <= self.n_train,
            "num_threads": self.num_threads >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"LoraPopulationConfig: invalid {name}={getattr(self, name)!r}")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @classmethod
    def tiny(cls, **overrides) -> "LoraPopulationConfig":
        """A population of 6 adapters on a 2-layer, 32-wide base that builds in a few seconds (tests)."""
        small = dict(n_tasks=6, n_train=32, n_val=8, n_test=16, hidden_size=32, num_layers=2,
                     intermediate_size=64, base_steps=60, base_batch_size=32, lora_steps=15,
                     lora_batch_per_adapter=4)
        return cls(**{**small, **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "LoraPopulationConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise KeyError(f"LoraPopulationConfig has no field(s) {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    def key(self) -> str:
        """The cache directory's name: :func:`uws_core.weights.cache.config_digest` of the config and FORMAT_VERSION
        (with the torch / transformers versions and the numerical environment)."""
        return config_digest(self.to_dict(), FORMAT_VERSION)


class LoraPopulation:
    """A built population: files on disk plus the task objects and an evaluator.

    Attributes
    ----------
    root : Path           the population directory (``base/``, ``adapters/<name>/``, records.csv, ...)
    base_dir : Path       transformers checkpoint (config.json + model.safetensors)
    adapter_dirs : list   PEFT adapter dirs (adapter_config.json + adapter_model.safetensors), records order
    records : DataFrame   one row per adapter, columns ``RECORD_COLUMNS``
    tasks : dict          task name -> :class:`uws_core.zoo.tasks.Task` (train / val / test examples)
    info : dict           population.json: config, timings, versions, summary
    scaling : float       alpha / r of every adapter
    """

    def __init__(self, root: Path, config: LoraPopulationConfig):
        self.root, self.config = Path(root), config
        self.base_dir = self.root / "base"
        self.records = pd.read_csv(self.root / "records.csv", keep_default_na=False,
                                   dtype={"adapter": str, "task": str, "param": str})
        self.adapter_dirs = [self.root / "adapters" / a for a in self.records["adapter"]]
        self.info = json.loads((self.root / "population.json").read_text())
        self.tasks = {t.name: t for t in _make_tasks(config)}
        self.tokenizer = tasks_mod.CharTokenizer()
        self.scaling = config.lora_alpha / config.lora_r
        self._base = None

    def __repr__(self):
        return f"LoraPopulation({len(self.adapter_dirs)} adapters, root={str(self.root)!r})"

    def get_task(self, name: str) -> tasks_mod.Task:
        if name not in self.tasks:
            raise KeyError(f"population {self.root.name} has no task {name!r}; tasks: {sorted(self.tasks)}")
        return self.tasks[name]

    def load_base(self):
        """A fresh ``MistralForCausalLM`` read from ``base_dir`` (eval mode, float32)."""
        from transformers import MistralForCausalLM

        return MistralForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32, trust_remote_code=False).eval()

    def adapter_state(self, adapter: str | int) -> dict[str, torch.Tensor]:
        """One adapter's PEFT-keyed state dict, read from its ``adapter_model.safetensors``."""
        from safetensors.torch import load_file

        row = self.records.iloc[adapter] if isinstance(adapter, int) else self._row(adapter)
        return load_file(self.root / "adapters" / row["adapter"] / "adapter_model.safetensors")

    def _row(self, adapter: str):
        hit = self.records[self.records["adapter"] == adapter]
        if hit.empty:
            raise KeyError(f"population {self.root.name} has no adapter {adapter!r}")
        return hit.iloc[0]

    def evaluate(self, task_name: str, lora_state: dict | None = None, split: str = "test",
                 scaling: float | None = None) -> float:
        """Exact-match accuracy of the base (+ ``scaling * B @ A`` of a PEFT-keyed LoRA state) on a split.

        ``lora_state`` has keys as in ``adapter_model.safetensors`` (e.g.
        ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``), any rank; it is merged into a
        copy of the base weights. ``scaling`` defaults to the population's ``lora_alpha / lora_r``.
        """
        return float(self.evaluate_many([task_name], lora_state, split, scaling)[0])

    @torch.no_grad()
    def evaluate_many(self, task_names: list[str], lora_state: dict | None = None, split: str = "test",
                      scaling: float | None = None) -> np.ndarray:
        """:meth:`evaluate` of one state on several tasks (float64 (n_tasks,)): the state is merged into the base
        once and every task scored on that model, under the population's compute settings (the merge
        experiments score each merged state this way)."""
        examples = [self.get_task(t).split(split) for t in task_names]
        with compute_settings(self.config.num_threads):
            if self._base is None:
                self._base = self.load_base()
            model = self._base
            if lora_state is not None:
                model = copy.deepcopy(self._base)
                tinylm.merge_lora_state(model, lora_state, self.scaling if scaling is None else scaling)
            return np.array([tinylm.accuracy(model, self.tokenizer, ex).mean() for ex in examples])


# ---------------------------------------------------------------------------------------------- build
def _make_tasks(cfg: LoraPopulationConfig):
    return tasks_mod.make_tasks(cfg.n_tasks, cfg.task_seed, cfg.n_train, cfg.n_val, cfg.n_test)


def code_digest() -> str:
    """sha256 of the source of task_operations.py, tasks.py, tinylm.py and lora_zoo.py (recorded, checked with a
    warning)."""
    here = Path(__file__).resolve().parent
    return hashlib.sha256(b"".join((here / f).read_bytes()
                                   for f in ("task_operations.py", "tasks.py", "tinylm.py", "lora_zoo.py"))
                          ).hexdigest()[:16]


def _export_adapters(lora: tinylm.MultiLora, base_dir: Path, names: list[str], cfg, out_root: Path):
    """Write adapter j with the real peft library: get_peft_model + set_peft_model_state_dict + save."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import MistralForCausalLM

    # get_peft_model draws an init we overwrite: keep the global RNG as it was; silence a transformers
    # deprecation that peft triggers
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        base = MistralForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=False)
        peft_model = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                     target_modules=list(cfg.target_modules),
                                                     lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    peft_model.peft_config["default"].base_model_name_or_path = "../../base"  # relative to the adapter dir
    for j, name in enumerate(names):
        result = set_peft_model_state_dict(peft_model, lora.peft_state_dict(j))
        if result.unexpected_keys:
            raise KeyError(f"adapter {name}: keys PEFT does not know: {result.unexpected_keys[:3]}")
        # save_embedding_layers=False: embeddings are not adapted, and "auto" would query the hub
        peft_model.save_pretrained(out_root / name, save_embedding_layers=False)


#: the config fields that determine the base model (a population differing only in the others reuses it)
BASE_FIELDS = ("n_tasks", "task_seed", "n_train", "n_val", "n_test", "hidden_size", "num_layers", "num_heads",
               "num_kv_heads", "intermediate_size", "base_seed", "base_steps", "base_batch_size", "base_lr",
               "base_format_fraction")


def base_key(cfg: LoraPopulationConfig) -> str:
    """The base model's cache name: :func:`uws_core.weights.cache.config_digest` of :data:`BASE_FIELDS`."""
    return config_digest({"what": "lora-base", **{f: getattr(cfg, f) for f in BASE_FIELDS}}, FORMAT_VERSION)


def trained_base(cfg: LoraPopulationConfig, cache_root: Path, progress: bool = False) -> Path:
    """The instruction-tuned base of ``cfg`` in ``<cache_root>/lora_base_<base_key>/`` (trained once, verified by
    :mod:`uws_core.weights.cache`): populations that differ only in their adapter seed share it bit for bit, and the
    most expensive step of a build (about two thirds of it) runs once, or never where the repository ships the
    base of this key (:mod:`uws_core.zoo.pretrained`: the files are copied)."""
    def train(tmp: Path) -> dict:
        t0 = time.perf_counter()
        tok = tasks_mod.CharTokenizer()
        mcfg = tinylm.mistral_config(tok.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads,
                                     cfg.num_kv_heads, cfg.intermediate_size)
        model = tinylm.new_base_model(mcfg, cfg.base_seed)
        mixture = tasks_mod.BaseMixture(_make_tasks(cfg), seed=cfg.base_seed, format_fraction=cfg.base_format_fraction)
        with torch.random.fork_rng(), compute_settings(cfg.num_threads), \
                progress_bars.bar(cfg.base_steps, "base steps", level=1, show=progress) as bar:
            torch.manual_seed(cfg.base_seed)
            losses = tinylm.train_base(model, mixture, tok, cfg.base_steps, cfg.base_batch_size, cfg.base_lr,
                                       warmup=min(100, cfg.base_steps // 10 + 1), progress=bar)
            model.save_pretrained(tmp)  # inside compute_settings: no "Writing model shards" bar
        return {"base_final_loss": float(np.mean(losses[-max(1, cfg.base_steps // 10):])),
                "base_train_s": time.perf_counter() - t0}

    return pretrained.shipped_or_trained(cache_root, f"lora_base_{base_key(cfg)}", FORMAT_VERSION, train)


def _build(cfg: LoraPopulationConfig, out: Path, progress: bool, cache_root: Path) -> None:
    from transformers import MistralForCausalLM

    from uws_core.weights.cache import read_info

    t0 = time.perf_counter()
    timings = {}
    tok = tasks_mod.CharTokenizer()
    tasks = _make_tasks(cfg)
    n = len(tasks)
    # --- base: instruction-tuned on every operation's canonical format + part of the non-LoRA format combos,
    #     trained once per BASE_FIELDS and read back from its cache (the same path for a fresh and a cached base)
    base_root = trained_base(cfg, cache_root, progress)
    copy_entry(base_root, out / "base")
    model = MistralForCausalLM.from_pretrained(out / "base", dtype=torch.float32, trust_remote_code=False)
    base_info = read_info(base_root)
    timings["base_train_s"] = time.perf_counter() - t0
    # --- held-out accuracy of the base, every task at once
    t = time.perf_counter()
    test = [e for task in tasks for e in task.test]
    owner = torch.tensor([j for j, task in enumerate(tasks) for _ in task.test])  # (n_test_total,)
    base_acc = tinylm.accuracy(model, tok, test).reshape(n, cfg.n_test).mean(1)
    timings["eval_s"] = time.perf_counter() - t
    # --- LoRAs: one per task, all trained in one batch per step
    t = time.perf_counter()
    rng = np.random.default_rng(tasks_mod.stable_seed("population", cfg.seed))
    shared = np.zeros(n, dtype=bool)
    shared[rng.permutation(n)[:round(cfg.shared_init_fraction * n)]] = True
    shared_seed = tasks_mod.stable_seed("shared-init", cfg.seed)
    init_seeds = [shared_seed if shared[j] else tasks_mod.stable_seed("init", cfg.seed, j) for j in range(n)]
    seeds = [tasks_mod.stable_seed("adapter", cfg.seed, j) for j in range(n)]
    lora = tinylm.MultiLora(model, n, cfg.lora_r, cfg.lora_alpha, cfg.target_modules)
    for j in range(n):
        lora.init_A(j, init_seeds[j])
    with progress_bars.bar(cfg.lora_steps, f"{n} LoRAs, steps", level=1, show=progress) as bar:
        losses = tinylm.train_adapters(lora, [task.train for task in tasks], tok, cfg.lora_steps,
                                       cfg.lora_batch_per_adapter, cfg.lora_lr, seeds, progress=bar)
    timings["lora_train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    adapter_acc = tinylm.accuracy(model, tok, test, lora=lora, index=owner).reshape(n, cfg.n_test).mean(1)
    timings["eval_s"] += time.perf_counter() - t
    # --- export with peft, then the records
    t = time.perf_counter()
    names = [f"lora_{j:03d}_{task.name}" for j, task in enumerate(tasks)]
    _export_adapters(lora, out / "base", names, cfg, out / "adapters")
    timings["export_s"] = time.perf_counter() - t
    tail = max(1, cfg.lora_steps // 10)
    records = pd.DataFrame({
        "adapter": names, "task": [t.name for t in tasks], "family": [t.family for t in tasks],
        "input_format": [t.input_format for t in tasks], "output_format": [t.output_format for t in tasks],
        "param": [t.param or "" for t in tasks], "canonical": [t.canonical for t in tasks],
        "seed": seeds, "init_seed": init_seeds, "shared_init": shared, "steps": cfg.lora_steps,
        "final_train_loss": losses[-tail:].mean(0), "base_acc": base_acc, "adapter_acc": adapter_acc,
        "n_test": cfg.n_test})[RECORD_COLUMNS]
    records.to_csv(out / "records.csv", index=False)
    timings["total_s"] = time.perf_counter() - t0
    import peft
    import transformers

    info = {"config": cfg.to_dict(), "key": cfg.key(), "format": FORMAT_VERSION, "code_sha256": code_digest(),
            "timings_s": timings,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__},
            "machine": {"cpu_count": os.cpu_count(), "num_threads": cfg.num_threads}, "numerics": kernel_report(),
            "base_final_loss": base_info["base_final_loss"], "base_key": base_key(cfg),
            "model": {k: getattr(model.config, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                      "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")},
            "summary": {"n_adapters": n, "n_shared_init": int(shared.sum()),
                        "n_families": int(records["family"].nunique()),
                        "mean_base_acc": float(base_acc.mean()), "mean_adapter_acc": float(adapter_acc.mean())},
            "tokenizer_chars": tok.chars}
    (out / "population.json").write_text(json.dumps(info, indent=1))


def build_lora_population(config: LoraPopulationConfig | None = None, cache_dir: str | Path | None = None,
                          progress: bool = True) -> LoraPopulation:
    """Train the base and the LoRA population, or load it from the cache when already built.

    Parameters
    ----------
    config : LoraPopulationConfig, optional   defaults to ``LoraPopulationConfig()``
    cache_dir : path, optional                defaults to :func:`default_cache_dir`
    progress : bool                           tqdm bars while training

    Returns
    -------
    LoraPopulation
    """
    cfg = config or LoraPopulationConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / f"lora_population_{cfg.key()}"

    def build(tmp: Path) -> dict:
        with compute_settings(cfg.num_threads):
            _build(cfg, tmp, progress, root)
        return {"key": cfg.key()}

    fresh = not final.exists()
    build_cached(final, build, FORMAT_VERSION)
    pop = LoraPopulation(final, cfg)
    if not fresh and pop.info.get("code_sha256") != code_digest():
        # informational only: the source digest moves with any edit (an import path, a progress bar); whether
        # the weights are the committed ones is what uws_core.weights.fingerprints checks
        log.info("cached LoRA population %s was built by other source than the current uws_core (its content "
                 "fingerprint is the check); delete the directory to rebuild it", final)
    return pop
