"""PEFT-keyed LoRA state dicts: per-module factor pairs, dense updates, exact low-rank pairs, adapter files.

A LoRA state is keyed as PEFT saves it: ``<module>.lora_A.weight`` (r, d_in) and ``<module>.lora_B.weight``
(d_out, r) per adapted module, e.g. ``base_model.model.model.layers.0.self_attn.q_proj``; the module's weight
update is ``s * B @ A`` (``s = lora_alpha / r``). Here:

* :func:`split_lora_state` / :func:`join_lora_state`: state <-> ``{module: (B, A)}``, errors naming the adapter
  and the key; :func:`lora_products` (every module) and :func:`lora_delta` (one) give the dense ``s * B @ A``.
* :func:`lora_pair_from_dense`: the exact pair of a dense update at its numerical rank (balanced SVD split);
  :func:`compact_lora_pair`: the same for an update held as factors ``b @ a``, without forming it.
  Both cut at singular values above ``rtol`` times the largest (:func:`numerical_rank`).
* :func:`peft_state_from_dense`: a PEFT state of dense updates (one rank for all modules);
  :func:`dense_lora_state`: dense updates keyed by the base's weight keys as a full-rank "LoRA" (B = delta,
  A = I) that a population's ``evaluate(..., scaling=1)`` merges as ``W_base + delta``.
* :func:`save_peft_adapter`: a PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from uws_core.linalg.spectral import ShapeMismatchError

__all__ = ["LORA_A", "LORA_B", "PEFT_PREFIX", "split_lora_state", "join_lora_state", "lora_products", "lora_delta",
           "numerical_rank", "lora_pair_from_dense", "compact_lora_pair", "peft_state_from_dense", "peft_weight_key",
           "dense_lora_state", "save_peft_adapter"]

LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
#: PEFT's key prefix for a CausalLM: ``base_model.model.<the base's module name>``.
PEFT_PREFIX = "base_model.model."
_KEY_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
Weights = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------------ states <-> pairs
def split_lora_state(state: Mapping[str, torch.Tensor], name: str = "adapter") -> dict[str, tuple]:
    """PEFT-keyed state -> ``{module: (B (d_out, r), A (r, d_in))}``, modules sorted.

    A key that is not a LoRA factor, a factor that is not 2-D, a lone factor or factors of different ranks is
    an error (``KeyError`` / :class:`uws_core.linalg.spectral.ShapeMismatchError`) naming the adapter and the key."""
    pairs: dict[str, dict] = {}
    for key, t in state.items():
        m = _KEY_RE.match(key)
        if m is None:
            raise KeyError(f"{name}: key {key!r} is not '<module>{LORA_A}' or '<module>{LORA_B}'")
        if t.ndim != 2:
            raise ShapeMismatchError(f"{name}: key {key!r} has shape {tuple(t.shape)}, expected 2-D")
        pairs.setdefault(m.group("module"), {})[m.group("which")] = t
    out = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            have = next(iter(ab))
            raise KeyError(f"{name}: key {module + '.lora_' + have + '.weight'!r} has no matching "
                           f"lora_{'B' if have == 'A' else 'A'}")
        if ab["B"].shape[1] != ab["A"].shape[0]:
            raise ShapeMismatchError(f"{name}: key {module + LORA_A!r} has rank {ab['A'].shape[0]} "
                                     f"but lora_B {tuple(ab['B'].shape)}")
        out[module] = (ab["B"], ab["A"])
    return out


def join_lora_state(pairs: Mapping[str, tuple], dtype: torch.dtype = torch.float32) -> Weights:
    """``{module: (B, A)}`` -> PEFT-keyed state (contiguous CPU tensors of ``dtype``)."""
    out = {}
    for module, (b, a) in pairs.items():
        out[module + LORA_A] = a.detach().to("cpu", dtype).contiguous()
        out[module + LORA_B] = b.detach().to("cpu", dtype).contiguous()
    return out


def lora_products(state: Weights, scaling: float) -> Weights:
    """module -> the dense update ``scaling * B @ A`` (float64, (d_out, d_in)) of every module of ``state``."""
    return {mod: scaling * b.to(torch.float64) @ a.to(torch.float64) for mod, (b, a) in split_lora_state(state).items()}


def lora_delta(state: Weights, module: str, scaling: float) -> torch.Tensor:
    """``scaling * B @ A`` (d_out, d_in) float32 of one module of a PEFT-keyed state (computed in float64);
    a missing factor names the key."""
    for key in (module + LORA_A, module + LORA_B):
        if key not in state:
            raise KeyError(f"adapter state has no key {key!r}")
    b, a = state[module + LORA_B].double(), state[module + LORA_A].double()  # (d_out, r), (r, d_in)
    if b.shape[1] != a.shape[0]:
        raise ShapeMismatchError(f"{module}: B {tuple(b.shape)} and A {tuple(a.shape)} have different ranks")
    return (scaling * b @ a).to(torch.float32)


# ------------------------------------------------------------------------------------------ exact low-rank pairs
def numerical_rank(s: torch.Tensor, rtol: float) -> int:
    """How many singular values ``s`` (descending) exceed ``rtol`` times the largest; at least 1 (a zero matrix
    is kept as one zero column)."""
    top = float(s[0]) if s.numel() else 0.0
    return max(1, int((s > rtol * top).sum())) if top > 0 else 1


def lora_pair_from_dense(delta: torch.Tensor, scaling: float = 1.0, rtol: float = 1e-10,
                         max_rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B (d_out, rho), A (rho, d_in)) with ``scaling * B @ A = delta``, rho = numerical rank of delta (singular
    values above ``rtol`` times the largest), at most ``max_rank`` (then the best rank-``max_rank`` approximation).
    Balanced: B = U sqrt(S) / scaling, A = sqrt(S) V^T. A zero delta gives rank-1 zero factors.

    With a ``max_rank`` far below min(d_out, d_in) (4096 x 4096 updates of rank <= n r), the SVD is a randomized
    range finder with ``max_rank + 16`` columns and 4 power iterations (``torch.svd_lowrank``): exact whenever
    rank(delta) <= max_rank + 16, an approximation otherwise (measure ``scaling * B @ A - delta``)."""
    if delta.ndim != 2:
        raise ValueError(f"a dense update must be 2-D, got shape {tuple(delta.shape)}")
    d = delta.to(torch.float64)
    q = (max_rank or 0) + 16
    if max_rank and 2 * q < min(d.shape):
        u, s, v = torch.svd_lowrank(d, q=q, niter=4)
        vt = v.T
    else:
        u, s, vt = torch.linalg.svd(d, full_matrices=False)
    rho = numerical_rank(s, rtol)
    rho = min(rho, max_rank) if max_rank else rho
    root = s[:rho].sqrt()
    return u[:, :rho] * root / scaling, root[:, None] * vt[:rho]


def compact_lora_pair(b: torch.Tensor, a: torch.Tensor, rtol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """An exact pair ``(B' (d_out, q), A' (q, d_in))`` with ``B' A' = b @ a`` and q its numerical rank, float64.

    QR of ``b`` (d_out, R) and of ``a^T`` (d_in, R), SVD of the small core ``R_b R_a^T``; singular values
    not above ``rtol`` times the largest are dropped (q >= 1; a zero product gives one zero column)."""
    b, a = b.to(torch.float64), a.to(torch.float64)
    qb, rb = torch.linalg.qr(b)  # (d_out, m1), (m1, R)
    qa, ra = torch.linalg.qr(a.T)  # (d_in, m2), (m2, R)
    u, sv, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)  # core (m1, m2)
    q = numerical_rank(sv, rtol)
    root = sv[:q].sqrt()
    return (qb @ u[:, :q]) * root, root[:, None] * (vh[:q] @ qa.T)


def peft_state_from_dense(deltas: Weights, scaling: float = 1.0, rank: int | None = None, rtol: float = 1e-10) -> Weights:
    """A PEFT LoRA state (``<module>.lora_A.weight`` / ``.lora_B.weight``) whose ``scaling * B @ A`` reproduces each
    dense update (:func:`lora_pair_from_dense`, on the updates' device). All modules get one rank (``rank``,
    default the largest numerical rank; smaller ones are padded with zero rows/columns, which changes nothing),
    as one ``adapter_config.json`` needs."""
    pairs = {mod: lora_pair_from_dense(d, scaling, rtol, max_rank=rank) for mod, d in deltas.items()}
    r = rank or max(b.shape[1] for b, _ in pairs.values())
    out = {}
    for mod, (b, a) in pairs.items():
        pad = r - b.shape[1]
        out[mod + LORA_A] = torch.cat([a, a.new_zeros(pad, a.shape[1])]) if pad else a
        out[mod + LORA_B] = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1) if pad else b
    return out


# ------------------------------------------------------------------------------------------ base-model keys
def peft_weight_key(module: str) -> str:
    """PEFT module name (``base_model.model.model.layers.0.self_attn.q_proj``) -> the base model's weight key
    (``model.layers.0.self_attn.q_proj.weight``)."""
    if not module.startswith(PEFT_PREFIX):
        raise KeyError(f"{module!r} does not start with PEFT's prefix {PEFT_PREFIX!r}")
    return module[len(PEFT_PREFIX):] + ".weight"


def dense_lora_state(deltas: Weights) -> Weights:
    """Dense updates (weight key -> (d_out, d_in)) as a PEFT-keyed "LoRA" of full rank (B = delta, A = I), so
    that :meth:`uws_core.zoo.lora_zoo.LoraPopulation.evaluate` (``scaling=1``) evaluates ``W_base + delta``."""
    out = {}
    for key, d in deltas.items():
        if not key.endswith(".weight") or d.ndim != 2:
            raise ValueError(f"{key!r}: need a '<module>.weight' key and a (d_out, d_in) update, got {tuple(d.shape)}")
        module = PEFT_PREFIX + key[:-len(".weight")]
        out[module + LORA_B] = d.detach().to(torch.float32).clone()
        out[module + LORA_A] = torch.eye(d.shape[1])
    return out


# ------------------------------------------------------------------------------------------ files
def save_peft_adapter(state: Weights, directory: Path | str, like: dict, scaling: float = 1.0) -> Path:
    """Write a PEFT adapter directory (adapter_config.json + adapter_model.safetensors, float32) for ``state``.

    ``like`` is a source adapter's config (``LoraAdapterConfig.raw``); r comes from the state and lora_alpha is
    set so that lora_alpha / r = ``scaling`` (no rsLoRA, no per-module patterns)."""
    from safetensors.torch import save_file

    ranks = {b.shape[1] for b, _ in split_lora_state(state).values()}
    if len(ranks) != 1:
        raise ValueError(f"one rank per adapter is needed, got ranks {sorted(ranks)}: use peft_state_from_dense(rank=)")
    r = ranks.pop()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = {**like, "r": r, "lora_alpha": scaling * r, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {},
           "peft_type": "LORA"}
    (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.to(torch.float32).contiguous() for k, v in state.items()}, str(d / "adapter_model.safetensors"))
    return d
