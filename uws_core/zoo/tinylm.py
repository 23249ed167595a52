"""A tiny Mistral-architecture causal LM, a batched multi-LoRA wrapper, training loops and greedy evaluation.

The base is a real ``transformers.MistralForCausalLM`` (grouped-query attention, RoPE, SwiGLU, RMSNorm),
only small. :class:`MultiLora` replaces its q/k/v projections by :class:`MultiLoraLinear`, which holds
the LoRA factors of ``n_adapters`` adapters as stacks ``A: (n_adapters, r, d_in)`` and
``B: (n_adapters, d_out, r)`` (PEFT's layout) and adds ``scaling * B[i] @ A[i] x`` to example ``i``'s
projection, so all adapters train together in one forward pass. :meth:`MultiLora.peft_state_dict`
returns one adapter under the exact keys PEFT writes to ``adapter_model.safetensors``.

Accuracy is exact match of the greedy answer. It is computed with one teacher-forced forward pass: greedy
decoding emits the reference answer followed by <eos> exactly when the argmax at every answer position
(the EOS position included) equals the reference token; :func:`greedy_decode` does real decoding and
the tests check that both agree.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uws_core.zoo.lr_schedule import warmup_cosine_to_tenth
from uws_core.zoo.tasks import BOS, EOS, PAD, CharTokenizer, Example

__all__ = ["mistral_config", "new_base_model", "encode_examples", "answer_nll", "answer_correct",
           "MultiLoraLinear", "MultiLora", "train_base", "train_adapters", "accuracy", "greedy_decode",
           "merge_lora_state"]

TARGET_MODULES = ("q_proj", "k_proj", "v_proj")
PEFT_PREFIX = "base_model.model."  # PEFT's key prefix for a CausalLM, as in adapter_model.safetensors


def mistral_config(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                   num_kv_heads: int = 1, intermediate_size: int = 256, max_len: int = 64):
    """A small ``MistralConfig`` (GQA num_heads : num_kv_heads, as 32 : 8 in Mistral-7B; untied lm_head)."""
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_kv_heads, head_dim=hidden_size // num_heads,
                         max_position_embeddings=max_len, sliding_window=None, tie_word_embeddings=False,
                         pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, attn_implementation="sdpa")


def new_base_model(config, seed: int):
    """``MistralForCausalLM(config)`` with weights drawn from ``seed`` (the global RNG is left untouched)."""
    from transformers import MistralForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MistralForCausalLM(config)


# ---------------------------------------------------------------------------------------------- data
def encode_examples(tokenizer: CharTokenizer, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[BOS] prompt answer [EOS]`` ids (n, T) and the mask (n, T) of answer+EOS tokens.

    ``mask[:, t]`` marks a token the model must predict from position ``t - 1``. Right padding needs no
    attention mask: with causal attention the pads never influence the real tokens before them.
    """
    seqs, starts = [], []
    for e in examples:
        p = tokenizer.encode(e.prompt)
        seqs.append([BOS] + p + tokenizer.encode(e.answer) + [EOS])
        starts.append(1 + len(p))
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, (s, a) in enumerate(zip(seqs, starts)):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, a:len(s)] = True
    return ids, mask


def _shifted(logits, ids, mask):
    # logits (B, T, V) at position t predict ids[:, t + 1]
    return logits[:, :-1], ids[:, 1:], mask[:, 1:]


def answer_nll(logits, ids, mask) -> torch.Tensor:
    """Per-example mean negative log-likelihood of the answer+EOS tokens, shape (B,)."""
    lg, tgt, m = _shifted(logits, ids, mask)
    nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none").view(tgt.shape)
    return (nll * m).sum(1) / m.sum(1).clamp(min=1)


def answer_correct(logits, ids, mask) -> torch.Tensor:
    """(B,) bool: greedy decoding reproduces the answer and then stops (argmax == target everywhere)."""
    lg, tgt, m = _shifted(logits, ids, mask)
    return ((lg.argmax(-1) == tgt) | ~m).all(1) & m.any(1)


# ---------------------------------------------------------------------------------------------- multi-LoRA
class _Router:
    """Shared by all MultiLoraLinear layers of a model: which adapter each example of the batch uses."""

    index: torch.Tensor | None = None  # (B,) adapter per example, or None for the bare base


class MultiLoraLinear(nn.Module):
    """``base(x) + scaling * x A[i]^T B[i]^T`` for example i's adapter; A (n, r, d_in), B (n, d_out, r)."""

    def __init__(self, base: nn.Linear, n_adapters: int, r: int, scaling: float, router: _Router):
        super().__init__()
        self.base, self.scaling, self.router = base, scaling, router
        self.lora_A = nn.Parameter(torch.zeros(n_adapters, r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(n_adapters, base.out_features, r))

    def forward(self, x):  # x (B, T, d_in)
        out = self.base(x)
        idx = self.router.index
        if idx is None:
            return out
        a, b = self.lora_A[idx], self.lora_B[idx]  # (B, r, d_in), (B, d_out, r)
        return out + self.scaling * torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))


class MultiLora:
    """Install ``n_adapters`` LoRA adapters (rank r, scaling alpha / r) on q/k/v of every layer, in place.

    The base weights are frozen. Use ``with lora.adapters(index): model(ids)`` to run example ``b`` with
    adapter ``index[b]``.
    """

    def __init__(self, model, n_adapters: int, r: int, alpha: float, target_modules=TARGET_MODULES):
        self.model, self.n_adapters, self.r, self.alpha = model, n_adapters, r, alpha
        self.scaling = alpha / r
        self.router = _Router()
        for p in model.parameters():
            p.requires_grad_(False)
        self.layers: dict[str, MultiLoraLinear] = {}  # module name in the base model -> wrapper
        for name, mod in list(model.named_modules()):
            for t in target_modules:
                if isinstance(getattr(mod, t, None), nn.Linear):
                    wrapped = MultiLoraLinear(getattr(mod, t), n_adapters, r, self.scaling, self.router)
                    setattr(mod, t, wrapped)
                    self.layers[f"{name}.{t}"] = wrapped
        if not self.layers:
            raise ValueError(f"no nn.Linear named {target_modules} found in {type(model).__name__}")

    def parameters(self):
        return [p for m in self.layers.values() for p in (m.lora_A, m.lora_B)]

    @contextlib.contextmanager
    def adapters(self, index: torch.Tensor | None):
        """Run example b of the batch with adapter ``index[b]`` (None: the bare base) inside the block."""
        self.router.index = index
        try:
            yield
        finally:
            self.router.index = None

    def init_A(self, i: int, seed: int) -> None:
        """PEFT's default init for adapter i: A ~ kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(d_in)), B = 0."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.layers.values():  # fixed module order -> same A for the same seed
                bound = 1.0 / math.sqrt(m.lora_A.shape[-1])
                m.lora_A[i] = (torch.rand(m.lora_A.shape[1:], generator=gen) * 2 - 1) * bound
                m.lora_B[i] = 0.0

    def peft_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Adapter i under PEFT's saved keys (``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``)."""
        out = {}
        for name, m in self.layers.items():
            out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A[i].detach().clone()  # (r, d_in)
            out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_B[i].detach().clone()  # (d_out, r)
        return out

    def load_peft_state_dict(self, i: int, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, m in self.layers.items():
                for f in ("A", "B"):
                    key = f"{PEFT_PREFIX}{name}.lora_{f}.weight"
                    if key not in state:
                        raise KeyError(f"LoRA state has no key {key!r}")
                    getattr(m, f"lora_{f}")[i] = state[key]


def merge_lora_state(model, state: dict[str, torch.Tensor], scaling: float) -> None:
    """Add ``scaling * B @ A`` of a PEFT-keyed LoRA state (any rank) into ``model``'s weights, in place.

    Keys are parsed by :func:`uws_core.weights.peft_state.split_lora_state` (errors name the key); every module must
    carry PEFT's prefix and be a module of ``model`` whose weight the product fits."""
    from uws_core.weights.peft_state import split_lora_state

    modules = dict(model.named_modules())
    pairs = split_lora_state(state, name="LoRA state")
    with torch.no_grad():
        for module, (b, a) in pairs.items():
            name = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else None
            if name not in modules:
                raise KeyError(f"LoRA state for module {module!r}: not '{PEFT_PREFIX}<module of the base>'")
            w = modules[name].weight  # (d_out, d_in)
            b, a = b.to(torch.float64), a.to(torch.float64)  # (d_out, r), (r, d_in)
            if b.shape[0] != w.shape[0] or a.shape[1] != w.shape[1]:
                raise ValueError(f"LoRA state for {module!r}: B {tuple(b.shape)} @ A {tuple(a.shape)} "
                                 f"does not fit weight {tuple(w.shape)}")
            w.copy_((w.to(torch.float64) + scaling * b @ a).to(w.dtype))


# ---------------------------------------------------------------------------------------------- training
def train_base(model, mixture, tokenizer, steps: int, batch_size: int, lr: float, warmup: int = 50,
               weight_decay: float = 0.0, n_chunks: int = 2, progress=None) -> list[float]:
    """Instruction-tune the base on fresh mixture samples (loss on answer tokens only); returns losses.

    Each batch is sorted by length and run as ``n_chunks`` forward passes (less padding), gradients
    accumulated; AdamW with warmup and cosine decay to 10% of ``lr``, gradient norm clipped at 1.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine_to_tenth(s, steps, warmup))
    model.train()
    losses = []
    for _ in range(steps):
        batch = sorted(mixture.sample(batch_size), key=lambda e: len(e.prompt) + len(e.answer))
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for chunk in np.array_split(np.arange(batch_size), n_chunks):
            ids, mask = encode_examples(tokenizer, [batch[i] for i in chunk])
            loss = answer_nll(model(input_ids=ids).logits, ids, mask).sum() / batch_size
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(total)
        if progress is not None:
            progress.update(1)
    model.eval()
    return losses


def train_adapters(lora: MultiLora, train_sets: list[list[Example]], tokenizer, steps: int,
                   batch_per_adapter: int, lr: float, seeds, warmup: int = 20,
                   n_chunks: int = 4, progress=None) -> np.ndarray:
    """Train adapter j on ``train_sets[j]``, all adapters in one batch per step; returns losses (steps, n).

    Adapter j draws its minibatches (``batch_per_adapter`` examples without replacement) from its own
    ``np.random.default_rng(seeds[j])``. The loss is the *sum* over adapters of each adapter's mean answer
    NLL, so with Adam (elementwise) every adapter follows the trajectory it would have if trained alone,
    up to float round-off. Each step sorts its examples by length into ``n_chunks`` forward passes (less
    padding) and accumulates their gradients.
    """
    n = lora.n_adapters
    if len(train_sets) != n or len(seeds) != n:
        raise ValueError(f"{len(train_sets)} train sets and {len(seeds)} seeds for {n} adapters")
    enc = [encode_examples(tokenizer, s) for s in train_sets]
    T = max(e[0].shape[1] for e in enc)  # padded to the longest example of any task
    ids_all = torch.stack([F.pad(i, (0, T - i.shape[1]), value=PAD) for i, _ in enc])   # (n, n_train, T)
    mask_all = torch.stack([F.pad(m, (0, T - m.shape[1])) for _, m in enc])             # (n, n_train, T)
    lengths = (ids_all != PAD).sum(-1)                                                   # (n, n_train)
    rngs = [np.random.default_rng(s) for s in seeds]
    opt = torch.optim.Adam(lora.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine_to_tenth(s, steps, warmup))
    lora.model.eval()  # Mistral has no dropout; LoRA dropout is 0
    losses = np.zeros((steps, n))
    k = batch_per_adapter
    adapter_of = torch.arange(n).repeat_interleave(k)                                    # (n*k,)
    for step in range(steps):
        pick = torch.from_numpy(np.stack([g.choice(ids_all.shape[1], k, replace=False) for g in rngs]))  # (n, k)
        ids = ids_all[torch.arange(n)[:, None], pick].reshape(n * k, T)                   # (n*k, T)
        mask = mask_all[torch.arange(n)[:, None], pick].reshape(n * k, T)
        length = lengths[torch.arange(n)[:, None], pick].reshape(-1)
        # sort by length and run a few chunks, each padded only to its own longest example
        order = torch.argsort(length, stable=True)
        opt.zero_grad(set_to_none=True)
        step_loss = torch.zeros(n, dtype=torch.float64)
        for chunk in torch.tensor_split(order, n_chunks):
            t_max = int(length[chunk].max())
            c_ids, c_mask, c_idx = ids[chunk, :t_max], mask[chunk, :t_max], adapter_of[chunk]
            with lora.adapters(c_idx):
                nll = answer_nll(lora.model(input_ids=c_ids).logits, c_ids, c_mask)      # (chunk,)
            # sum over adapters of each adapter's mean NLL over its k examples
            (nll.sum() / k).backward()
            step_loss.index_add_(0, c_idx, nll.detach().to(torch.float64) / k)
        opt.step()
        sched.step()
        losses[step] = step_loss.numpy()
        if progress is not None:
            progress.update(1)
    return losses


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def accuracy(model, tokenizer, examples: list[Example], lora: MultiLora | None = None,
             index: torch.Tensor | None = None, batch_size: int = 2048) -> np.ndarray:
    """(n,) bool: exact match of the greedy answer for each example (adapter ``index[b]`` when given)."""
    out = []
    for s in range(0, len(examples), batch_size):
        ids, mask = encode_examples(tokenizer, examples[s:s + batch_size])
        ctx = lora.adapters(index[s:s + batch_size]) if lora is not None else contextlib.nullcontext()
        with ctx:
            out.append(answer_correct(model(input_ids=ids).logits, ids, mask))
    return torch.cat(out).numpy()


@torch.no_grad()
def greedy_decode(model, tokenizer, prompts: list[str], max_new_tokens: int = 24,
                  lora: MultiLora | None = None, index: torch.Tensor | None = None) -> list[str]:
    """Real greedy decoding (no KV cache; every step re-runs the right-padded batch).

    Returns the generated text up to <eos> (at most ``max_new_tokens`` tokens); a generated <pad> or
    <bos> shows as U+FFFD.
    """
    seqs = [[BOS] + tokenizer.encode(p) for p in prompts]
    cur = torch.tensor([len(s) for s in seqs])
    buf = torch.full((len(seqs), int(cur.max()) + max_new_tokens), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        buf[i, :len(s)] = torch.tensor(s)
    start, done = cur.clone(), torch.zeros(len(seqs), dtype=torch.bool)
    rows = torch.arange(len(seqs))
    for _ in range(max_new_tokens):
        ctx = lora.adapters(index) if lora is not None else contextlib.nullcontext()
        with ctx:
            logits = model(input_ids=buf[:, :int(cur.max())]).logits
        nxt = logits[rows, cur - 1].argmax(-1)
        buf[rows[~done], cur[~done]] = nxt[~done]
        done |= nxt == EOS
        cur = torch.where(done, cur, cur + 1)
        if bool(done.all()):
            break
    return [tokenizer.decode(buf[i, start[i]:cur[i] + 1].tolist(), mark_specials=True) for i in range(len(seqs))]
