"""The small Llama of the laptop population: its transformers config, checkpoint I/O in the real key
names, a batched functional forward (:func:`llama_logits`) and batched training / evaluation of many models.

Split from :mod:`uws_core.zoo.llama_zoo`, which plans, builds and caches the population with these pieces. The
model is a ``LlamaForCausalLM`` with Llama-3's layout at toy size (grouped-query attention, RoPE, SwiGLU MLP
gate/up/down, RMSNorm, untied head). :func:`llama_logits` runs ``G`` models at once on stacked parameters
(G, ...) and equals transformers' forward to float32 round-off (tests/test_llama_model.py checks it);
:func:`train_models` fully fine-tunes G models together with Adam, and :func:`evaluate_models` gives each
model's held-out answer loss and exact-match accuracy. The builds run under
:func:`uws_core.linalg.numerics.compute_settings` (fixed thread count, deterministic kernels), so a build gives
the same bits on any machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from uws_core.zoo import tinylm
from uws_core.weights.checkpoints import load_checkpoint_state as load_state
from uws_core.weights.checkpoints import save_checkpoint
from uws_core.zoo.lr_schedule import warmup_cosine
from uws_core.zoo.tasks import PAD, CharTokenizer


class LlamaSettings(Protocol):
    """What the model's functions read of a population plan (:class:`uws_core.zoo.llama_zoo.LlamaZooConfig` is
    one): the architecture (width, depth, heads, KV heads, MLP, RoPE) and the fine-tuning settings."""
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    rope_theta: float
    batch_size: int
    warmup_frac: float
    weight_decay: float

__all__ = ["llama_config", "seeded_llama_model", "init_state", "save_llama", "load_state", "llama_logits",
           "train_models", "evaluate_models", "MATRIX_TYPES"]

# the seven weight matrices of a layer, by short name -> key infix (``model.layers.<i>.<infix>.weight``)
MATRIX_TYPES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
                "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


# ---------------------------------------------------------------------------------------------- the model
def llama_config(cfg: LlamaSettings, vocab_size: int):
    """The ``transformers.LlamaConfig`` of the population (no biases, no dropout, untied head)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.hidden_size // cfg.num_heads,
                       max_position_embeddings=64, rope_theta=cfg.rope_theta, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
                       attn_implementation="sdpa")


def seeded_llama_model(cfg: LlamaSettings, vocab_size: int, seed: int = 0):
    """A ``LlamaForCausalLM`` initialised under ``seed``; the global torch RNG is left as it was."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return LlamaForCausalLM(llama_config(cfg, vocab_size)).eval()


def init_state(cfg: LlamaSettings, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """transformers' own initialisation of the base under ``seed``, keyed as in ``model.safetensors``."""
    return {k: v.detach().clone() for k, v in seeded_llama_model(cfg, vocab_size, seed).state_dict().items()}


def save_llama(state: dict[str, torch.Tensor], directory: Path | str, cfg: LlamaSettings) -> Path:
    """Write one model with ``LlamaForCausalLM.save_pretrained`` (config.json + model.safetensors)."""
    model = seeded_llama_model(cfg, int(state["model.embed_tokens.weight"].shape[0]))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return save_checkpoint(model, directory)


def _rms_norm(x, w, eps):
    """x (G, M, H), w (G, H): RMSNorm in float32 as transformers' LlamaRMSNorm."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.unsqueeze(1)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def llama_logits(params: dict[str, torch.Tensor], ids: torch.Tensor, cfg: LlamaSettings,
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


def train_models(base: dict[str, torch.Tensor], train_sets: list[list], lrs, steps, seeds, cfg: LlamaSettings,
                 tok: CharTokenizer | None = None, progress=None) -> tuple[list[dict], np.ndarray]:
    """Fully fine-tune G copies of ``base``, model i on ``train_sets[i]``, all in one batched forward per step.

    Model i draws ``cfg.batch_size`` distinct examples per step from ``np.random.default_rng(seeds[i])``;
    Adam (betas 0.9 / 0.999) with linear warm-up and cosine decay to 0 over its own ``steps[i]`` (lr 0
    after; a finished model leaves the batched forward), decoupled weight decay ``cfg.weight_decay`` on matrices.
    The loss is the sum over models of each model's mean answer NLL, so every model follows the trajectory it
    would follow alone, up to round-off (tests/test_llama_model.py checks it).
    Returns the trained states (float32, saved key names) and each model's mean loss over its last 10% steps.
    ``progress``: anything with ``update(1)`` (a tqdm bar), called after every step; it only counts.
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
        lr = torch.tensor([warmup_cosine(step, s, lr_i, cfg.warmup_frac) for s, lr_i in zip(steps, lrs)])
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
        if progress is not None:
            progress.update(1)
    tail = [float(np.nanmean(losses[max(0, s - max(1, s // 10)):s, i])) for i, s in enumerate(steps)]
    states = [{k: v[i].detach().clone() for k, v in params.items()} for i in range(g)]
    return states, np.asarray(tail)


@torch.no_grad()
def evaluate_models(states: list[dict], example_sets: list[list], cfg: LlamaSettings, chunk: int = 8,
                    tok: CharTokenizer | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out answer loss and exact-match accuracy of each state on its own example list.

    Loss: mean over examples of the mean NLL of the answer and <eos> tokens (:func:`uws_core.zoo.tinylm.answer_nll`);
    accuracy: share of examples whose greedy answer is exactly right (:func:`uws_core.zoo.tinylm.answer_correct`,
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
