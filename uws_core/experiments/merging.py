"""Model merging on name-keyed weight dicts: mean, task arithmetic, TIES, DARE, the universal-subspace merge and
an SVD-alignment merge for LoRAs (KnOTS-style), and the accuracy of merged ViT states (:func:`vit_accuracy`; merged
LoRA states are scored by :meth:`uws_core.zoo.lora_zoo.LoraPopulation.evaluate_many`).

Every merge takes ``deltas``: a list of ``dict[str, Tensor]``, one per task, with identical keys and shapes.
A delta is a *task update*: ``W_i - W_base`` for full fine-tunes (:func:`task_vectors`), or, for LoRAs, either
the PEFT state itself (``...lora_A.weight`` / ``...lora_B.weight`` keys: A and B are then merged separately,
each factor as its own tensor) or the dense products ``scaling * B_i @ A_i`` keyed by module
(:func:`uws_core.weights.peft_state.lora_products`). Merges are computed in float64 and return float64 dicts; apply one
with :func:`apply_delta`, or turn a dense LoRA update back into an exact PEFT pair with
:func:`uws_core.weights.peft_state.peft_state_from_dense`.

Conventions (the papers leave them open): TIES trims *per tensor*, as mergekit, peft and the replication do,
rather than over the whole flattened model. Its default convention ``"floor_elect_plus"`` is the peers': each
key of each task keeps its ``int(density * numel)`` largest magnitudes (at least 1) and the elected sign is +1
where the trimmed values cancel exactly (peft ``utils/merge_utils.py`` ``magnitude_based_pruning`` /
``calculate_majority_sign_mask``: ``where(sum >= 0, 1, -1)``; cahlen/universal-subspace-stress-test
``experiments/phase3_merging/run_merge.py`` L131-138). ``"ceil_elect_zero"`` is uws's earlier convention (keep
``ceil(density * numel)``, elect 0 on exact cancellation, so nothing is merged there). Ties at the threshold are
all kept (the replication; peft's ``topk`` keeps exactly k, the same for continuous values).

Naming of the linear merges: :func:`task_arithmetic` with ``lam = 1`` is the replication's ``task_arith`` (a plain
sum, run_merge.py L102-109, although its header L14 says 1/K, which is :func:`mean_merge`). peft's LoRA merges
(``add_weighted_adapter``) act on the factors: :func:`uws_core.experiments.peft_merge.peft_factor_merge` reproduces its "linear" and "ties"
(``sqrt(w_i s_i)`` on each factor, so "linear" with w_i = 1/K and one scaling s gives ``K s mean(B) mean(A)``: K
times uws's "mean of A and B separately", :func:`mean_merge` on PEFT states); its "cat" is
:func:`task_arithmetic` of the scaled products with ``lam = w`` and its "svd" the best rank-r approximation of
that sum. DARE draws one Bernoulli mask per (seed, task, key), so a result does not depend on the order of the
keys (peft draws from torch's global generator: equal at p = 0). Merges return only the update; ``lam`` scales it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from uws_core.linalg.numerics import stable_seed_63_masked

__all__ = ["check_deltas", "task_vectors", "apply_delta", "mean_merge", "task_arithmetic", "ties_merge", "dare_merge",
           "fit_subspace", "subspace_merge", "svd_aligned_merge", "lora_svd_aligned_merge", "sign_agreement",
           "SubspaceBasis", "norm", "ties_trim", "ties_tensor", "TIES_CONVENTIONS",
           "vit_accuracy"]

Weights = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------------------ validation
def check_deltas(deltas: list[Weights], names: list[str] | None = None) -> list[str]:
    """The common keys of ``deltas`` (sorted), after checking that every dict has the same keys and shapes and
    only finite values; the error names the task and the key."""
    if not deltas:
        raise ValueError("no task updates given")
    names = names or [f"task {i}" for i in range(len(deltas))]
    ref = deltas[0]
    for name, d in zip(names, deltas):
        if set(d) != set(ref):
            missing, extra = sorted(set(ref) - set(d)), sorted(set(d) - set(ref))
            raise KeyError(f"{name}: keys differ from {names[0]}: "
                           + (f"missing {missing[0]!r}" if missing else f"extra {extra[0]!r}")
                           + f" ({len(missing)} missing, {len(extra)} extra)")
        for key, t in d.items():
            if t.shape != ref[key].shape:
                raise ValueError(f"{name}: key {key!r} has shape {tuple(t.shape)}, {names[0]} has {tuple(ref[key].shape)}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name}: key {key!r} holds NaN or Inf")
    return sorted(ref)


def _stack(deltas: list[Weights], key: str) -> torch.Tensor:
    return torch.stack([d[key].to(torch.float64) for d in deltas])  # (n_tasks, *shape)


def _per_key(deltas, fn, names=None) -> Weights:
    return {key: fn(_stack(deltas, key), key) for key in check_deltas(deltas, names)}


def task_vectors(finetuned: list[Weights], base: Weights, keys: list[str] | None = None) -> list[Weights]:
    """``W_i - W_base`` (float64) for ``keys`` (default: every key of ``base``); each fine-tune must hold them all."""
    keys = sorted(base) if keys is None else list(keys)
    out = []
    for i, w in enumerate(finetuned):
        for key in keys:
            if key not in w:
                raise KeyError(f"fine-tune {i} has no key {key!r}")
            if w[key].shape != base[key].shape:
                raise ValueError(f"fine-tune {i}: key {key!r} has shape {tuple(w[key].shape)}, base {tuple(base[key].shape)}")
        out.append({key: w[key].to(torch.float64) - base[key].to(torch.float64) for key in keys})
    return out


def apply_delta(base: Weights, delta: Weights) -> Weights:
    """``base + delta`` on the keys of ``delta`` (in base's dtype); other keys of ``base`` are kept as they are."""
    out = dict(base)
    for key, d in delta.items():
        if key not in base:
            raise KeyError(f"update key {key!r} is not a key of the base")
        if base[key].shape != d.shape:
            raise ValueError(f"update key {key!r} has shape {tuple(d.shape)}, the base {tuple(base[key].shape)}")
        out[key] = (base[key].to(torch.float64) + d).to(base[key].dtype)
    return out


# ------------------------------------------------------------------------------------------------ classic merges
def mean_merge(deltas: list[Weights]) -> Weights:
    """``(1/n) sum_i delta_i``."""
    return _per_key(deltas, lambda s, k: s.mean(0))


def task_arithmetic(deltas: list[Weights], lam: float) -> Weights:
    """Task arithmetic (Ilharco et al. 2023): ``lam * sum_i delta_i``; ``lam = 1`` is the replication's plain sum."""
    return _per_key(deltas, lambda s, k: lam * s.sum(0))


TIES_CONVENTIONS = ("floor_elect_plus", "ceil_elect_zero")


def _check_convention(convention: str) -> str:
    if convention not in TIES_CONVENTIONS:
        raise ValueError(f"TIES convention must be one of {TIES_CONVENTIONS}, got {convention!r}")
    return convention


def ties_trim(stack: torch.Tensor, density: float, convention: str = "floor_elect_plus") -> torch.Tensor:
    """Keep, per task (row of ``stack`` (n, ...)), the ``int(density * numel)`` (``"floor_elect_plus"``, at least 1)
    or ``ceil(density * numel)`` (``"ceil_elect_zero"``) largest magnitudes; zero the rest."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    flat = stack.reshape(stack.shape[0], -1)  # (n, numel)
    n_keep = int(density * flat.shape[1]) if _check_convention(convention) == "floor_elect_plus" \
        else math.ceil(density * flat.shape[1])
    keep = max(1, n_keep)
    if keep >= flat.shape[1]:
        return stack.clone()
    # (n, 1): the keep-th largest magnitude = the (numel - keep + 1)-th smallest (kthvalue: linear time)
    thresh = flat.abs().kthvalue(flat.shape[1] - keep + 1, dim=1, keepdim=True).values
    return torch.where(flat.abs() >= thresh, flat, torch.zeros_like(flat)).reshape(stack.shape)


def ties_tensor(stack: torch.Tensor, density: float, lam: float = 1.0, convention: str = "floor_elect_plus",
                weights=None) -> torch.Tensor:
    """TIES on one stacked tensor (n, ...): trim to ``density``, elect the sign of the summed trimmed values
    (+1 on exact cancellation for ``"floor_elect_plus"``, 0 there for ``"ceil_elect_zero"``), average the entries
    that agree with it (disjoint mean; 0 where none agrees), times ``lam``. ``weights`` (n,), optional, multiply
    each task after trimming and election, before the disjoint mean (peft's ``ties``)."""
    t = ties_trim(stack, density, convention)
    total = t.sum(0)
    sign = torch.where(total >= 0, 1.0, -1.0).to(t.dtype) if convention == "floor_elect_plus" else torch.sign(total)
    agree = (torch.sign(t) == sign) & (t != 0)  # (n, ...)
    count = agree.sum(0)
    if weights is not None:
        t = t * torch.as_tensor(weights, dtype=t.dtype, device=t.device).reshape(-1, *([1] * (t.ndim - 1)))
    return lam * torch.where(agree, t, torch.zeros_like(t)).sum(0) / count.clamp(min=1)


def ties_merge(deltas: list[Weights], density: float, lam: float = 1.0, convention: str = "floor_elect_plus") -> Weights:
    """TIES-merging (Yadav et al. 2023), per tensor: trim, elect sign, disjoint mean, scale by ``lam``
    (``convention``: see the module docstring; the default is peft's and the replication's)."""
    _check_convention(convention)
    return _per_key(deltas, lambda s, k: ties_tensor(s, density, lam, convention))




def dare_merge(deltas: list[Weights], p: float, lam: float = 1.0, seed: int = 0, combine: str = "sum") -> Weights:
    """DARE (Yu et al. 2024): drop each entry of each delta with probability ``p``, rescale the rest by
    ``1 / (1 - p)``, then combine: ``"sum"`` (task arithmetic, ``lam * sum``) or ``"ties"`` (TIES at density 1).
    The mask of task i and key k is drawn from a generator seeded by ``(seed, i, k)``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop probability p must be in [0, 1), got {p}")
    if combine not in ("sum", "ties"):
        raise ValueError(f"combine must be 'sum' or 'ties', got {combine!r}")

    def one(stack, key):
        masks = torch.stack([torch.rand(stack.shape[1:], generator=torch.Generator().manual_seed(stable_seed_63_masked(seed, i, key)),
                                        dtype=torch.float64) >= p for i in range(stack.shape[0])]).to(stack.device)
        kept = stack * masks / (1.0 - p)
        return lam * kept.sum(0) if combine == "sum" else ties_tensor(kept, 1.0, lam)
    return _per_key(deltas, one)


# ------------------------------------------------------------------------------------------------ subspace merge
@dataclass
class SubspaceBasis:
    """One key's basis: ``mean`` (the centring matrix), ``basis`` (orthonormal columns), ``unfolding``."""

    mean: torch.Tensor   # (d_out, d_in) float64
    basis: torch.Tensor  # rows: (d_in, k); cols: (d_out, k); model: (d_out*d_in, k)
    unfolding: str
    evr: torch.Tensor    # (k,) explained-variance ratio of each kept direction


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    """Tensors as (d_out, d_in): 1-D -> (1, d), >= 3-D -> (shape[0], rest)."""
    return t.reshape(1, -1) if t.ndim == 1 else t.reshape(t.shape[0], -1)


def _fit_one(stack: torch.Tensor, k: int, unfolding: str) -> SubspaceBasis:
    """Top-k basis of one unfolding of the mean-centred stack (n, d_out, d_in), by a thin SVD in float64 (a
    randomized one, ``torch.svd_lowrank`` with k + 10 columns and 6 power iterations, when the unfolding's smaller
    side is >= 1024 and far above k; the merge = mean identity holds for any basis)."""
    n, d_out, d_in = stack.shape
    mean = stack.mean(0)
    c = stack - mean  # (n, d_out, d_in): centred by the mean update (the authors' full-model centring)
    mat = {"rows": lambda: c.reshape(n * d_out, d_in), "cols": lambda: c.transpose(1, 2).reshape(n * d_in, d_out),
           "model": lambda: c.reshape(n, d_out * d_in)}[unfolding]()
    if min(mat.shape) >= 1024 and 4 * (k + 10) < min(mat.shape):  # paper shapes (8 x 1024 rows of 4096)
        _, s, v = torch.svd_lowrank(mat, q=k + 10, niter=6)
        vt = v.T
    else:
        _, s, vt = torch.linalg.svd(mat, full_matrices=False)  # right singular vectors span the basis
    k = min(k, vt.shape[0])
    total = (mat ** 2).sum()
    evr = (s[:k] ** 2) / total if total > 0 else torch.zeros(k, dtype=torch.float64)
    return SubspaceBasis(mean=mean, basis=vt[:k].T.contiguous(), unfolding=unfolding, evr=evr)


def fit_subspace(deltas: list[Weights], k: int, unfolding: str = "rows") -> dict[str, SubspaceBasis]:
    """Per key, the top-``k`` basis of the task updates centred by their mean, in one unfolding of the stack
    (n, d_out, d_in): ``rows`` ((n d_out) x d_in, input-side basis: the authors' recipe for full models), ``cols``
    ((n d_in) x d_out, output side) or ``model`` (n x d_out d_in, each update flattened). Plain thin SVD."""
    if unfolding not in ("rows", "cols", "model"):
        raise ValueError(f"unfolding must be rows, cols or model, got {unfolding!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    keys = check_deltas(deltas)
    return {key: _fit_one(torch.stack([_as_matrix(d[key].to(torch.float64)) for d in deltas]), k, unfolding)
            for key in keys}


def _coefficients(c: torch.Tensor, b: SubspaceBasis) -> torch.Tensor:
    """Coordinates of centred updates c (n, d_out, d_in): rows (n, d_out, k), cols (n, k, d_in), model (n, k)."""
    if b.unfolding == "rows":
        return c @ b.basis
    if b.unfolding == "cols":
        return b.basis.T @ c
    return c.reshape(c.shape[0], -1) @ b.basis


def _reconstruct(z: torch.Tensor, b: SubspaceBasis) -> torch.Tensor:
    if b.unfolding == "rows":
        return z @ b.basis.T
    if b.unfolding == "cols":
        return b.basis @ z
    return (b.basis @ z).reshape(b.mean.shape)


def subspace_merge(deltas: list[Weights], k: int, unfolding: str = "rows", basis: dict[str, SubspaceBasis] | None = None,
                   coefficients: str = "mean", density: float = 0.2, lam: float = 1.0) -> Weights:
    """The universal-subspace merge: fit a basis on the task updates, merge their coefficients, map back.

    Rule, per key (updates T_i as matrices (d_out, d_in)): M = the basis' centring matrix (by default the mean
    of the T_i being merged, the authors' centring), C_i = T_i - M, U = top-``k`` basis of an unfolding of the
    C_i (:func:`fit_subspace`; or ``basis``, e.g. fitted on a whole population), Z_i = coordinates of C_i in U,
    merged = M + U(merge(Z_1..Z_n)) with ``coefficients`` ``"mean"`` (the authors) or ``"ties"`` (TIES on the
    coordinates at ``density``, scaled by ``lam``).

    Identity: with the default centring and the mean rule, mean_i Z_i = (mean_i C_i) U = 0 by linearity, so the
    merge returns M = mean_i T_i exactly, for every k and unfolding: the subspace merge *is* the simple mean
    (the replication's finding). tests/test_merging.py checks it.
    """
    if coefficients not in ("mean", "ties"):
        raise ValueError(f"coefficients must be 'mean' or 'ties', got {coefficients!r}")
    keys = check_deltas(deltas)
    if basis is None:
        basis = fit_subspace(deltas, k, unfolding)
    elif set(basis) != set(keys):
        raise KeyError(f"basis keys differ from the updates' (e.g. {sorted(set(keys) ^ set(basis))[0]!r})")
    out = {}
    for key in keys:
        b, shape = basis[key], deltas[0][key].shape
        kb = b.basis[:, :k]
        bk = SubspaceBasis(mean=b.mean, basis=kb, unfolding=b.unfolding, evr=b.evr[:k])
        c = torch.stack([_as_matrix(d[key].to(torch.float64)) for d in deltas]) - b.mean  # (n, d_out, d_in)
        z = _coefficients(c, bk)
        zm = z.mean(0) if coefficients == "mean" else ties_tensor(z, density, lam)
        out[key] = (b.mean + _reconstruct(zm, bk)).reshape(shape)
    return out


# ------------------------------------------------------------------------------------------------ SVD alignment
def _merge_aligned(v: torch.Tensor, how: str, density: float, lam: float) -> torch.Tensor:
    """Merge per-task blocks v (n, R, d_in) of the shared right singular vectors."""
    if how == "ties":
        return ties_tensor(v, density, lam)
    if how == "sum":
        return lam * v.sum(0)
    if how == "mean":
        return v.mean(0)
    raise ValueError(f"merge must be 'ties', 'sum' or 'mean', got {how!r}")


def svd_aligned_merge(deltas: list[Weights], merge: str = "ties", density: float = 0.2, lam: float = 1.0) -> Weights:
    """KnOTS-style merge (Stoica et al. 2025) of dense updates, per key.

    The updates (as (d_out, d_in) matrices) are concatenated side by side and decomposed jointly:
    ``[T_1 ... T_n] = U S [V_1^T ... V_n^T]`` (thin SVD of the (d_out, n d_in) matrix), so that T_i = U S V_i^T
    in one shared basis U S. The task blocks V_i^T (R, d_in) are merged (``"ties"``: TIES at ``density`` times
    ``lam``; ``"sum"``: ``lam * sum``; ``"mean"``), and merged = U S V^T. ``"mean"`` returns the mean update.
    """
    def one(stack, key):
        mats = torch.stack([_as_matrix(t) for t in stack])  # (n, d_out, d_in)
        n, d_out, d_in = mats.shape
        u, s, vt = torch.linalg.svd(mats.permute(1, 0, 2).reshape(d_out, n * d_in), full_matrices=False)
        v = vt.reshape(-1, n, d_in).permute(1, 0, 2)  # (n, R, d_in): task i's block of V^T
        return ((u * s) @ _merge_aligned(v, merge, density, lam)).reshape(stack.shape[1:])
    return _per_key(deltas, one)


def lora_svd_aligned_merge(B: torch.Tensor, A: torch.Tensor, merge: str = "ties", density: float = 0.2,
                           lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The same merge for one module of n LoRAs, without forming any d_out x d_in matrix.

    B (n, d_out, r) already scaled (``scaling * B_i``), A (n, r, d_in). The concatenation [B_1 A_1 ... B_n A_n]
    = Q R blockdiag(A_i) with Q R = [B_1 ... B_n] (d_out, n r); the SVD of the small (n r, n d_in) matrix
    R blockdiag(A_i) = U_m S V^T gives U = Q U_m. Returns an exact pair (B_m (d_out, R), A_m (R, d_in)) with
    B_m A_m = U S V_merged^T, R <= n r.
    """
    n, d_out, r = B.shape
    q, rr = torch.linalg.qr(B.to(torch.float64).permute(1, 0, 2).reshape(d_out, n * r))  # (d_out, nr), (nr, nr)
    m = torch.cat([rr[:, i * r:(i + 1) * r] @ A[i].to(torch.float64) for i in range(n)], dim=1)  # (nr, n d_in)
    um, s, vt = torch.linalg.svd(m, full_matrices=False)
    v = vt.reshape(-1, n, A.shape[2]).permute(1, 0, 2)  # (n, R, d_in)
    return (q @ um) * s, _merge_aligned(v, merge, density, lam)


# ------------------------------------------------------------------------------------------------ statistics
def sign_agreement(deltas: list[Weights]) -> float:
    """Share of entries (over all keys, nonzero in some task) where every task's nonzero update has one sign."""
    agree = total = 0
    for key in check_deltas(deltas):
        s = torch.sign(_stack(deltas, key)).reshape(len(deltas), -1)  # (n, numel)
        live = (s != 0).any(0)
        same = ((s >= 0).all(0) | (s <= 0).all(0)) & live
        agree, total = agree + int(same.sum()), total + int(live.sum())
    return agree / total if total else float("nan")


def norm(delta: Weights) -> float:
    """Frobenius norm of a whole update dict (float64)."""
    return float(np.sqrt(sum(float((t.to(torch.float64) ** 2).sum()) for t in delta.values())))


# ------------------------------------------------------------------------------------------------ evaluation
# LoRA merges are scored by uws_core.zoo.lora_zoo.LoraPopulation.evaluate_many (one merge, every task).
def vit_accuracy(states: list[Weights], tasks: list[str], config, split: str = "test", n_val: int = 128) -> np.ndarray:
    """Accuracy of ViT states, each on its own task, batched (:func:`uws_core.zoo.vit_model.evaluate_states`):
    ``split`` is ``"test"``, ``"train"`` or ``"val"``. The ViT tasks have no validation split: ``"val"`` is a
    fixed sample of ``n_val`` examples of the train split (:func:`uws_core.zoo.vit_tasks.train_sample_indices`),
    data the fine-tunes were trained on, used only to choose merge hyperparameters; all states in one forward."""
    from uws_core.zoo.vit_model import evaluate_states

    if split != "val":
        return evaluate_states(states, tasks, config, split)
    return evaluate_states(states, tasks, config, "train", chunk=max(1, len(states)), sample=n_val)
