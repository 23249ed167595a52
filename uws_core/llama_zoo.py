"""The laptop-scale LLaMA population: a small ``LlamaForCausalLM`` base and many full fine-tunes, cached.

It mirrors the paper's 50 full fine-tunes of Llama-3-8B (instruction, domain, language and reward models) with
a base of the same architecture at toy size (grouped-query attention 4 : 2 heads, RoPE with theta 500000,
SwiGLU MLP gate/up/down, RMSNorm, untied head; default hidden 64, 2 layers, MLP 160), trained by our code:

1. the base is instruction-tuned on the generated tasks of :mod:`uws_core.tasks` (canonical formats plus part
   of the other format combinations, :class:`uws_core.tasks.BaseMixture`), in English only;
2. ``n_finetunes`` full fine-tunes (every parameter, embeddings and norms included) start from it, each on
   the tasks of :func:`uws_core.llama_tasks.finetune_plan` (instruction mix, one domain, a mix in a remapped
   alphabet, or verifier tasks), with its own seed, learning rate and step count; all are trained together
   by a batched functional forward (:func:`llama_logits`, equal to transformers' forward to float32
   round-off) and Adam on stacked parameters;
3. every model is written with ``LlamaForCausalLM.save_pretrained`` (``model.safetensors`` + config.json,
   keys ``model.layers.0.self_attn.q_proj.weight``, ``model.layers.0.mlp.gate_proj.weight``, ...), read by
   :class:`uws_core.checkpoints.CheckpointSet`.

One fine-tune in every block of ``unseen_every`` is held out of any basis (records column ``group`` =
``unseen``, else ``fit``; :func:`unseen_finetune`). The build is deterministic (one thread, deterministic
kernels, seeds from the config) and cached by :mod:`uws_core.cache` in ``<cache>/llama/<config digest>``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from uws_core import llama_tasks, tinylm
from uws_core.cache import build_cached, config_digest, default_cache_dir, read_info
from uws_core.tasks import PAD, BaseMixture, CharTokenizer, make_tasks

__all__ = ["LlamaZooConfig", "LlamaPopulation", "build_llama_population", "llama_config", "init_state",
           "llama_logits", "train_models", "evaluate_models", "save_llama", "load_state", "unseen_finetune",
           "compute_settings", "MATRIX_TYPES"]

log = logging.getLogger(__name__)
FORMAT_VERSION = 1  # bump when the files or the training code change meaning
MATRIX_TYPES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
                "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
RECORD_COLUMNS = ["name", "task_group", "domain", "language", "tasks", "n_tasks", "seed", "lr", "steps",
                  "final_train_loss", "test_loss", "test_acc", "base_test_loss", "base_test_acc", "n_test",
                  "group", "dir"]


@dataclass(frozen=True)
class LlamaZooConfig:
    """Every setting of the population (its digest names the cache directory)."""

    # --- tasks (uws_core.tasks): a pool of tasks with disjoint train / val / test inputs
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
    # --- full fine-tunes (uws_core.llama_tasks.finetune_plan)
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
        """12 hex digits naming the cache directory (:func:`uws_core.cache.config_digest`)."""
        return config_digest(self.to_dict(), FORMAT_VERSION)


# ---------------------------------------------------------------------------------------------- the model
def llama_config(cfg: LlamaZooConfig, vocab_size: int):
    """The ``transformers.LlamaConfig`` of the population (no biases, no dropout, untied head)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.hidden_size // cfg.num_heads,
                       max_position_embeddings=64, rope_theta=cfg.rope_theta, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
                       attn_implementation="sdpa")


def _hf_model(cfg: LlamaZooConfig, vocab_size: int, seed: int = 0):
    """A ``LlamaForCausalLM`` initialised under ``seed``; the global torch RNG is left as it was."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return LlamaForCausalLM(llama_config(cfg, vocab_size)).eval()


def init_state(cfg: LlamaZooConfig, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """transformers' own initialisation of the base under ``seed``, keyed as in ``model.safetensors``."""
    return {k: v.detach().clone() for k, v in _hf_model(cfg, vocab_size, seed).state_dict().items()}


def save_llama(state: dict[str, torch.Tensor], directory: Path | str, cfg: LlamaZooConfig) -> Path:
    """Write one model with ``LlamaForCausalLM.save_pretrained`` (config.json + model.safetensors)."""
    import transformers.utils.logging as hf_logging

    model = _hf_model(cfg, int(state["model.embed_tokens.weight"].shape[0]))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.save_pretrained(Path(directory), safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return Path(directory)


def load_state(directory: Path | str) -> dict[str, torch.Tensor]:
    """Every tensor of one saved model (saved key names, float32)."""
    from safetensors.torch import load_file

    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return load_file(str(path))


def _rms_norm(x, w, eps):
    """x (G, M, H), w (G, H): RMSNorm in float32 as transformers' LlamaRMSNorm."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.unsqueeze(1)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def llama_logits(params: dict[str, torch.Tensor], ids: torch.Tensor, cfg: LlamaZooConfig,
                 eps: float = 1e-5) -> torch.Tensor:
    """Forward pass of G Llama models at once (the computation of ``LlamaForCausalLM``, causal, no mask).

    Parameters
    ----------
    params : saved key -> tensor with a leading model axis G (e.g. q_proj weight (G, H, H))
    ids : (G, B, T) token ids, right-padded (pads after the text never influence it under causal attention)

    Returns
    -------
    logits (G, B, T, vocab)
    """
    g, b, t = ids.shape
    hid, nh, nkv = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads
    hd = hid // nh
    emb = params["model.embed_tokens.weight"]                                      # (G, V, H)
    h = emb[torch.arange(g).view(g, 1, 1), ids].reshape(g, b * t, hid)             # (G, B*T, H)
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    freqs = torch.arange(t, dtype=torch.float32)[:, None] * inv_freq[None]         # (T, hd/2)
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()  # (T, hd)
    for layer in range(cfg.num_layers):
        p = f"model.layers.{layer}."
        a = _rms_norm(h, params[p + "input_layernorm.weight"], eps)

        def heads(name, n):  # (G, B*T, H) -> (G*B, n, T, hd)
            return torch.bmm(a, params[p + name].transpose(1, 2)).reshape(g * b, t, n, hd).transpose(1, 2)
        q, k, v = heads("self_attn.q_proj.weight", nh), heads("self_attn.k_proj.weight", nkv), \
            heads("self_attn.v_proj.weight", nkv)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)  # GQA
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)                # (G*B, nh, T, hd)
        att = att.transpose(1, 2).reshape(g, b * t, hid)
        h = h + torch.bmm(att, params[p + "self_attn.o_proj.weight"].transpose(1, 2))
        a = _rms_norm(h, params[p + "post_attention_layernorm.weight"], eps)
        m = F.silu(torch.bmm(a, params[p + "mlp.gate_proj.weight"].transpose(1, 2))) \
            * torch.bmm(a, params[p + "mlp.up_proj.weight"].transpose(1, 2))        # (G, B*T, I)
        h = h + torch.bmm(m, params[p + "mlp.down_proj.weight"].transpose(1, 2))
    h = _rms_norm(h, params["model.norm.weight"], eps)
    return torch.bmm(h, params["lm_head.weight"].transpose(1, 2)).reshape(g, b, t, -1)


# ---------------------------------------------------------------------------------------------- batches
@contextlib.contextmanager
def compute_settings(num_threads: int):
    """Fixed thread count and deterministic kernels inside the block (the caller's settings restored after)."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def _encode_sets(example_sets: list[list], tok: CharTokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids (G, n_max, T) and answer masks of G example lists, plus the (G, n_max) valid mask."""
    enc = [tinylm.encode_examples(tok, s) for s in example_sets]
    n, t = max(e[0].shape[0] for e in enc), max(e[0].shape[1] for e in enc)
    ids = torch.full((len(enc), n, t), PAD, dtype=torch.long)
    mask = torch.zeros((len(enc), n, t), dtype=torch.bool)
    valid = torch.zeros((len(enc), n), dtype=torch.bool)
    for i, (x, m) in enumerate(enc):
        ids[i, :x.shape[0], :x.shape[1]], mask[i, :m.shape[0], :m.shape[1]], valid[i, :x.shape[0]] = x, m, True
    return ids, mask, valid


def _lr_at(step: int, total: int, lr: float, warmup_frac: float) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0; 0 once ``total`` is done."""
    if step >= total:
        return 0.0
    warm = max(1, int(math.ceil(warmup_frac * total)))
    if step < warm:
        return lr * (step + 1) / warm
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_models(base: dict[str, torch.Tensor], train_sets: list[list], lrs, steps, seeds, cfg: LlamaZooConfig,
                 tok: CharTokenizer | None = None) -> tuple[list[dict], np.ndarray]:
    """Fully fine-tune G copies of ``base``, model i on ``train_sets[i]``, all in one batched forward per step.

    Model i draws ``cfg.batch_size`` distinct examples per step from ``np.random.default_rng(seeds[i])``;
    Adam (betas 0.9 / 0.999) with linear warm-up and cosine decay to 0 over its own ``steps[i]`` (lr 0
    after; a finished model leaves the batched forward), decoupled weight decay ``cfg.weight_decay`` on matrices.
    The loss is the sum over models of each model's mean answer NLL, so every model follows the trajectory it
    would follow alone, up to round-off (tests/test_llama_zoo.py checks it).
    Returns the trained states (float32, saved key names) and each model's mean loss over its last 10% steps.
    """
    tok = tok or CharTokenizer()
    g, bs = len(train_sets), cfg.batch_size
    if not (len(lrs) == len(steps) == len(seeds) == g):
        raise ValueError(f"{g} train sets but {len(lrs)} lrs, {len(steps)} step counts, {len(seeds)} seeds")
    small = [i for i, s in enumerate(train_sets) if len(s) < bs]
    if small:
        raise ValueError(f"model {small[0]}: {len(train_sets[small[0]])} training examples < batch_size {bs}")
    ids_all, mask_all, _ = _encode_sets(train_sets, tok)                            # (G, n_max, T)
    lengths = (ids_all != PAD).sum(-1)                                               # (G, n_max)
    rngs = [np.random.default_rng(int(s)) for s in seeds]
    params = {k: v.to(torch.float32).unsqueeze(0).repeat(g, *([1] * v.ndim)).requires_grad_() for k, v in base.items()}
    m1 = {k: torch.zeros_like(v) for k, v in params.items()}
    m2 = {k: torch.zeros_like(v) for k, v in params.items()}
    b1, b2, adam_eps = 0.9, 0.999, 1e-8
    losses = np.full((max(steps), g), np.nan)
    for step in range(max(steps)):
        active = torch.tensor([i for i, s in enumerate(steps) if step < s])         # models still training
        a = len(active)
        pick = torch.from_numpy(np.stack([rngs[i].choice(len(train_sets[i]), bs, replace=False)
                                          for i in active.tolist()]))                 # (A, B) example indices
        t_max = int(lengths[active[:, None], pick].max())
        ids, mask = ids_all[active[:, None], pick, :t_max], mask_all[active[:, None], pick, :t_max]  # (A, B, t_max)
        sub = params if a == g else {k: v[active] for k, v in params.items()}       # finished models skip the forward
        logits = llama_logits(sub, ids, cfg)                                         # (A, B, t_max, V)
        nll = tinylm.answer_nll(logits.reshape(a * bs, t_max, -1), ids.reshape(a * bs, t_max),
                                mask.reshape(a * bs, t_max)).reshape(a, bs).mean(1)  # (A,)
        for p in params.values():
            p.grad = None
        nll.sum().backward()
        lr = torch.tensor([_lr_at(step, s, lr_i, cfg.warmup_frac) for s, lr_i in zip(steps, lrs)])
        with torch.no_grad():
            for k, p in params.items():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                shape = (g,) + (1,) * (p.ndim - 1)
                m1[k].mul_(b1).add_(p.grad, alpha=1 - b1)
                m2[k].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                t = step + 1
                update = (m1[k] / (1 - b1 ** t)) / ((m2[k] / (1 - b2 ** t)).sqrt() + adam_eps)
                if p.ndim >= 3 and cfg.weight_decay:
                    update = update + cfg.weight_decay * p
                p.sub_(lr.view(shape) * update)
        losses[step, active.numpy()] = nll.detach().numpy()  # nan once a model is done
    tail = [float(np.nanmean(losses[max(0, s - max(1, s // 10)):s, i])) for i, s in enumerate(steps)]
    states = [{k: v[i].detach().clone() for k, v in params.items()} for i in range(g)]
    return states, np.asarray(tail)


@torch.no_grad()
def evaluate_models(states: list[dict], example_sets: list[list], cfg: LlamaZooConfig, chunk: int = 8,
                    tok: CharTokenizer | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out answer loss and exact-match accuracy of each state on its own example list.

    Loss: mean over examples of the mean NLL of the answer and <eos> tokens (:func:`uws_core.tinylm.answer_nll`);
    accuracy: share of examples whose greedy answer is exactly right (:func:`uws_core.tinylm.answer_correct`,
    one teacher-forced pass). ``chunk`` models per batched forward. Returns float64 arrays (G,), (G,).
    """
    if len(states) != len(example_sets):
        raise ValueError(f"{len(states)} states but {len(example_sets)} example lists")
    tok = tok or CharTokenizer()
    loss, acc = np.zeros(len(states)), np.zeros(len(states))
    for i0 in range(0, len(states), chunk):
        sts = states[i0:i0 + chunk]
        params = {k: torch.stack([s[k].to(torch.float32) for s in sts]) for k in sts[0]}
        ids, mask, valid = _encode_sets(example_sets[i0:i0 + chunk], tok)           # (g, n, T)
        g, n, t = ids.shape
        logits = llama_logits(params, ids, cfg).reshape(g * n, t, -1)
        nll = tinylm.answer_nll(logits, ids.reshape(g * n, t), mask.reshape(g * n, t)).reshape(g, n)
        ok = tinylm.answer_correct(logits, ids.reshape(g * n, t), mask.reshape(g * n, t)).reshape(g, n)
        cnt = valid.sum(1).double()
        loss[i0:i0 + g] = ((nll.double() * valid).sum(1) / cnt).numpy()
        acc[i0:i0 + g] = ((ok & valid).sum(1).double() / cnt).numpy()
    return loss, acc


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


def _build(cfg: LlamaZooConfig, out: Path) -> dict:
    timings, t0 = {}, time.perf_counter()
    cpu0 = time.process_time()
    tok = CharTokenizer()
    tasks = _make_tasks(cfg)
    by_name = {t.name: t for t in tasks}
    # --- base: instruction tuning on the canonical formats and part of the other combinations (English)
    model = _hf_model(cfg, tok.vocab_size, cfg.base_seed)
    mixture = BaseMixture(tasks, seed=cfg.base_seed, format_fraction=cfg.base_format_fraction)
    base_losses = tinylm.train_base(model, mixture, tok, cfg.base_steps, cfg.base_batch_size, cfg.base_lr,
                                    warmup=min(100, cfg.base_steps // 10 + 1))
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    timings["base_train_s"] = time.perf_counter() - t0
    # --- full fine-tunes, all at once
    t = time.perf_counter()
    plan = _plan(cfg, tasks)
    states, final_loss = train_models(base, [_examples(j, by_name, "train") for j in plan], [j["lr"] for j in plan],
                                      [j["steps"] for j in plan], [j["seed"] for j in plan], cfg, tok)
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
    save_llama(base, out / "base", cfg)
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
            "base_final_train_loss": float(np.mean(base_losses[-max(1, cfg.base_steps // 10):])),
            "summary": {"n_finetunes": len(plan), "n_unseen": int(sum(unseen)),
                        "mean_test_acc": float(test_acc.mean()), "mean_base_test_acc": float(base_acc.mean())}}


def build_llama_population(config: LlamaZooConfig | None = None,
                           cache_dir: Path | str | None = None) -> LlamaPopulation:
    """Train the base and its full fine-tunes, or read them from the cache when already built.

    Parameters
    ----------
    config : LlamaZooConfig, optional    default ``LlamaZooConfig()`` (40 fine-tunes; about 75 s of CPU, one thread);
                                         ``LlamaZooConfig.tiny()`` for tests
    cache_dir : path, optional           cache root (default :func:`uws_core.cache.default_cache_dir`); the
                                         population lives in ``<root>/llama/<config digest>``
    """
    cfg = config or LlamaZooConfig()
    final = Path(cache_dir or default_cache_dir()) / "llama" / cfg.digest()

    def build(tmp: Path) -> dict:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            with compute_settings(cfg.num_threads):
                return _build(cfg, tmp)
        finally:
            if bars:
                hf_logging.enable_progress_bar()

    return LlamaPopulation(build_cached(final, build, FORMAT_VERSION), cfg)
