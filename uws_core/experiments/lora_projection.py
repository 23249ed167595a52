"""LoRA adapters projected onto a subspace fitted on the *other* adapters (leave-one-out), two recipes.

An adapter is a PEFT-keyed state dict: ``<module>.lora_A.weight`` (r, d_in) and ``<module>.lora_B.weight``
(d_out, r) per adapted module; its weight update is ``s * B @ A`` (``s = lora_alpha / r``). Every function
here returns PEFT-keyed states in the same convention (the held-out adapter's own ``s``), so
``LoraPopulation.evaluate(task, state)`` and ``peft`` take them as they are.

Recipes, per module key, each fitted on the N-1 adapters other than the held-out one:

* ``"factors"`` (the authors'): A and B separately. ``X_A = [A_1^T ... A_n^T]`` (d_in, n r) centred by its
  mean column ``mu_A``; ``U_A`` (d_in, k) its top-k left singular vectors (plain truncated SVD of the
  "rows" unfolding of the A stack, centre "samples"); B likewise on the output side (``U_B``, ``mu_B``).
  Without the mean (the authors' reconstruction): ``A_hat = (U_A U_A^T A^T)^T``, ``B_hat = U_B U_B^T B``.
  With the mean: ``A_hat^T = mu_A 1^T + U_A U_A^T (A^T - mu_A 1^T)``, likewise B. Note that this "mean" is
  the mean *column* of the factors, not the mean adapter: at k = 0 it gives ``B_hat @ A_hat = r mu_B mu_A^T``.
* ``"product"`` (the replication's): the model axis; each ``P_i = s_i B_i A_i`` flattened, centred by the mean
  adapter ``M`` of the others, top-k PCA basis kept in factored form
  (:class:`uws_core.linalg.lora_model_basis.FactoredModelBasis`).
  Without the mean: ``P_hat = sum_j <b_j, P> b_j``; with it: ``P_hat = M + sum_j <b_j, P - M> b_j`` (k = 0:
  the mean of the other adapters). ``P_hat = sum_i w_i P_i`` is an exact factor pair of rank (N-1) r, reduced
  by :func:`uws_core.weights.peft_state.compact_lora_pair` to its numerical rank (at most ``min(d_out, d_in)``).

Leave-one-out is exact: the product recipe computes the N x N Gram once per module and fits each held-out
adapter on the Gram's submatrix of the others; the factor recipe refits its SVD on the others' factors.
The held-out adapter never enters its own basis or mean.

:func:`loo_relative_errors` gives the weight-space reconstruction error at any scale; for the laptop
population, :func:`uws_core.experiments.lora_loo_accuracy.loo_reconstruction_accuracy` gives per-task accuracies of the
reconstructed adapters (what notebook 08 reads).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from uws_core.linalg.device import ACCUM_DTYPE, pick_device
from uws_core.linalg.numerics import thread_settings
from uws_core.linalg.lora import lora_product_spectrum
from uws_core.linalg.lora_model_basis import FactoredModelBasis
from uws_core.weights.peft_state import compact_lora_pair, join_lora_state, split_lora_state
from uws_core.linalg.spectral import ShapeMismatchError, check_finite
from uws_core.linalg.subspace import eigh_descending, model_axis_eigen

__all__ = ["RECIPES", "CONTROLS", "K_GRID", "random_factor_basis", "LoraStack",
           "fit_factor_basis", "project_factors", "ProductLeaveOneOut", "loo_reconstructions",
           "mean_of_others", "loo_relative_errors", "compact_product_pair", "indices_without"]

RECIPES = ("factors", "product")
#: Control: the factor recipe with random orthonormal bases of the same sizes (seeded per held-out adapter
#: and module) in place of the fitted U_A, U_B: what any k-dim subspace keeps, with no information at all.
CONTROLS = ("factors_random",)
K_GRID = (0, 1, 2, 4, 8, 16, 32, 64)


# ------------------------------------------------------------------------------------------ states
class LoraStack:
    """N adapters of one base, per module key: ``factors(key) -> (B (N, d_out, r), A (N, r, d_in))`` float64.

    Build with :meth:`from_states` (PEFT-keyed dicts in memory) or :meth:`from_adapter_set` (lazy, one module
    at a time: paper scale). ``scalings`` (N,) are the adapters' ``s``; the stored factors are unscaled.
    """

    def __init__(self, names, module_keys, shapes, scalings, loader):
        self.names, self.module_keys, self.shapes = list(names), list(module_keys), dict(shapes)
        self.scalings = np.asarray(scalings, dtype=np.float64)
        self._loader = loader
        if self.scalings.shape != (len(self.names),):
            raise ValueError(f"need one scaling per adapter ({len(self.names)}), got shape {self.scalings.shape}")

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"LoraStack({len(self)} adapters, {len(self.module_keys)} modules)"

    @classmethod
    def from_states(cls, states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str] | None = None,
                    scaling: float | Sequence[float] = 1.0) -> "LoraStack":
        """Stack PEFT-keyed states; every state must hold the same keys with the same shapes."""
        names = [f"adapter #{i}" for i in range(len(states))] if names is None else list(names)
        if len(states) < 2 or len(names) != len(states):
            raise ValueError(f"need at least 2 states and one name per state, got {len(states)} / {len(names)}")
        split = [split_lora_state(s, n) for s, n in zip(states, names)]
        ref = split[0]
        for n, pairs in zip(names[1:], split[1:]):
            for module in sorted(set(ref) | set(pairs)):
                if module not in pairs or module not in ref:
                    holder, lacker = (names[0], n) if module not in pairs else (n, names[0])
                    raise KeyError(f"{lacker} lacks key {module + '.lora_A.weight'!r} that {holder} holds")
                for f, (x, x0) in zip("BA", zip(pairs[module], ref[module])):
                    if x.shape != x0.shape:
                        raise ShapeMismatchError(f"{n}: key {module + '.lora_' + f + '.weight'!r} has shape "
                                                 f"{tuple(x.shape)}, but {tuple(x0.shape)} in {names[0]}")
        stacked = {m: (torch.stack([p[m][0] for p in split]).to(ACCUM_DTYPE),
                       torch.stack([p[m][1] for p in split]).to(ACCUM_DTYPE)) for m in ref}
        for m, (b, a) in stacked.items():
            for i in range(len(names)):
                check_finite(b[i], names[i], i, m + ".lora_B.weight")
                check_finite(a[i], names[i], i, m + ".lora_A.weight")
        shapes = {m: (b.shape[1], b.shape[2], a.shape[2]) for m, (b, a) in stacked.items()}
        scalings = np.broadcast_to(np.asarray(scaling, dtype=np.float64), (len(names),))
        return cls(names, sorted(ref), shapes, scalings, stacked.__getitem__)

    @classmethod
    def from_adapter_set(cls, aset) -> "LoraStack":
        """A lazy stack over an :class:`uws_core.weights.adapters.AdapterSet` (one module key in memory at a time)."""
        shapes = {m: aset.shape(m) for m in aset.module_keys}
        return cls(aset.names, aset.module_keys, shapes, aset.scalings, lambda m: aset.factors(m))

    def factors(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        if module not in self.shapes:
            raise KeyError(f"{module!r} is not a module key of this stack (e.g. {self.module_keys[0]!r})")
        return self._loader(module)

    def state(self, i: int) -> dict[str, torch.Tensor]:
        """Adapter i as a PEFT-keyed state (float64)."""
        pairs = {}
        for m in self.module_keys:
            b, a = self.factors(m)
            pairs[m] = (b[i], a[i])
        return join_lora_state(pairs, ACCUM_DTYPE)


# ------------------------------------------------------------------------------------------ algebra
def _pair_sq_norm(b, a) -> float:
    """``||b @ a||_F^2 = tr((b^T b)(a a^T))`` without the d_out x d_in product."""
    return float(((b.T @ b) * (a @ a.T)).sum())


def _pair_sq_dist(b1, a1, b2, a2) -> float:
    """``||b1 a1 - b2 a2||_F^2`` by r x r traces (clipped at 0)."""
    cross = float(((b1.T @ b2) * (a1 @ a2.T)).sum())
    return max(_pair_sq_norm(b1, a1) - 2 * cross + _pair_sq_norm(b2, a2), 0.0)


class FactorBasis:
    """The authors' bases for one module: ``u_a`` (d_in, k_a), ``mu_a`` (d_in,), ``u_b`` (d_out, k_b), ``mu_b``."""

    def __init__(self, u_a, mu_a, u_b, mu_b):
        self.u_a, self.mu_a, self.u_b, self.mu_b = u_a, mu_a, u_b, mu_b


def _factor_columns(B, A):
    """The authors' unfoldings: ``[B_1 ... B_n]`` (d_out, n r) and ``[A_1^T ... A_n^T]`` (d_in, n r), float64."""
    n, d_out, r = B.shape
    return (B.to(ACCUM_DTYPE).permute(1, 0, 2).reshape(d_out, n * r),
            A.to(ACCUM_DTYPE).permute(2, 0, 1).reshape(A.shape[2], n * r))


def _top_basis(cols: torch.Tensor, k: int | None, device):
    """Top-k left singular vectors of ``cols`` (d, m) centred by its mean column, from the eigenvectors of the
    d x d scatter ``X_c X_c^T`` (plain truncated SVD of one centred unfolding), capped at the numerical rank.

    Returns ``(U (d, k'), mu (d,))`` on the CPU."""
    x = cols.to(pick_device(device), ACCUM_DTYPE)
    d, m = x.shape
    mu = x.mean(dim=1)
    xc = x - mu[:, None]
    kk = min(d, m - 1) if k is None else min(int(k), d, m - 1)
    if kk <= 0:
        return torch.zeros(d, 0, dtype=ACCUM_DTYPE), mu.cpu()
    vals, vecs = eigh_descending(xc @ xc.T, kk, overwrite=True)  # scatter (d, d)
    rank = int((vals[:kk] > max(float(vals[0]), 1e-300) * d * np.finfo(np.float64).eps * 10).sum())
    return vecs[:, :rank].cpu(), mu.cpu()


def fit_factor_basis(B, A, k: int | None = None, device=None) -> FactorBasis:
    """The authors' recipe on a stack ``B (n, d_out, r)``, ``A (n, r, d_in)``: truncated SVD of the d_in x (n r)
    matrix of the A_i^T centred by its mean column (the "rows" unfolding of A, centre "samples") and of the
    d_out x (n r) matrix of the B_i (the "cols" unfolding of B); ``k=None`` keeps every component."""
    b_cols, a_cols = _factor_columns(B, A)
    u_a, mu_a = _top_basis(a_cols, k, device)
    u_b, mu_b = _top_basis(b_cols, k, device)
    return FactorBasis(u_a, mu_a, u_b, mu_b)


def random_factor_basis(B, A, k: int, seed: int) -> FactorBasis:
    """The control: random orthonormal ``U_A``, ``U_B`` (QR of a seeded Gaussian; the first k columns span a
    uniformly random k-dim subspace) of the sizes :func:`fit_factor_basis` would give for generic factors
    (``min(k, d, n r - 1)``), with the stack's mean columns."""
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for cols in _factor_columns(B, A):
        d, m = cols.shape
        g = torch.randn(d, max(0, min(int(k), d, m - 1)), generator=gen, dtype=ACCUM_DTYPE)
        out.append((torch.linalg.qr(g).Q if g.shape[1] else g, cols.mean(dim=1)))
    (u_b, mu_b), (u_a, mu_a) = out
    return FactorBasis(u_a, mu_a, u_b, mu_b)


def project_factors(b, a, basis: FactorBasis, k: int, add_mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B_hat (d_out, r), A_hat (r, d_in))`` of one adapter on the top-k factor bases (see module doc)."""
    b, a = b.to(ACCUM_DTYPE), a.to(ACCUM_DTYPE)
    out = []
    for x, u, mu in ((b, basis.u_b, basis.mu_b), (a.T, basis.u_a, basis.mu_a)):  # x (d, r): columns are samples
        u = u[:, :k]
        c = mu[:, None] if add_mean else torch.zeros_like(mu)[:, None]
        out.append(c + u @ (u.T @ (x - c)))
    return out[0], out[1].T


class ProductLeaveOneOut:
    """The replication's recipe (B@A model axis, centred) for one module, fitted on any subset of a stack.

    The Gram ``K_ij = <P_i, P_j>_F`` of all N adapters (``P_i = s_i B_i A_i``) is computed once in factored
    form; :meth:`fit` takes its submatrix over the chosen adapters, so the others never enter."""

    def __init__(self, B, A, scalings, device=None):
        self.B, self.A = B, A
        self.s = torch.from_numpy(np.array(scalings, dtype=np.float64))  # (N,) a writable copy
        self.device = pick_device(device)
        spec = lora_product_spectrum(B, A, "model", "models", k=1, device=self.device, scaling=self.s)
        self.gram = spec.factored.gram  # (N, N) float64
        self.shape = (B.shape[1], A.shape[2])

    def fit(self, idx: Sequence[int], k: int) -> FactoredModelBasis:
        """Centred model-axis basis of adapters ``idx`` with at most k (and at most rank) components."""
        idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        g = self.gram[idx][:, idx]
        n = len(idx)
        d = self.shape[0] * self.shape[1]
        vals = np.clip(torch.linalg.eigvalsh(g - g.mean(0) - g.mean(1, keepdim=True) + g.mean()).cpu().numpy(),
                       0, None)
        rank = int((vals > max(vals.max(), 1e-300) * n * np.finfo(np.float64).eps * 10).sum())
        kk = min(k, rank, n - 1, d)
        _, coef = model_axis_eigen(g, "models", max(kk, 1), d)
        coef = coef[:, :kk]
        step = max(1, 1024 // self.B.shape[2])  # Gram blocks of about 1024 factor rows, as in uws_core.linalg.lora
        chunks = [(self.B[idx[i:i + step]], self.A[idx[i:i + step]], self.s[idx[i:i + step]])
                  for i in range(0, n, step)]
        return FactoredModelBasis(chunks, g, coef, "models", self.shape, self.device)


def compact_product_pair(fb: FactoredModelBasis, coords, add_mean: bool, s_out: float):
    """``P_hat = sum_i w_i P_i`` as a compact pair in units of ``s_out`` (s_out * B' A' = P_hat)."""
    b_hat, a_hat = fb.reconstruct(coords, add_mean=add_mean)  # (1, d_out, n r), (n r, d_in)
    b, a = compact_lora_pair(b_hat[0], a_hat)
    return b / s_out, a


# ------------------------------------------------------------------------------------------ leave-one-out
def indices_without(n: int, j: int) -> np.ndarray:
    """``[0, ..., n-1]`` without ``j`` (int64): the fitting set of held-out adapter ``j``."""
    return np.array([i for i in range(n) if i != j], dtype=np.int64)


def _module_loo(B, A, s, j, ks, recipes, add_means, device, fitted=None, module=""):
    """Yield ``(recipe, add_mean, k, k_eff, (B_hat, A_hat))`` for held-out adapter j of one module."""
    n = B.shape[0]
    idx = indices_without(n, j)
    kmax = max(ks)
    for recipe in recipes:
        if recipe in ("factors", "factors_random"):
            if recipe == "factors":
                fbasis = fit_factor_basis(B[idx], A[idx], k=kmax, device=device)
            else:
                fbasis = random_factor_basis(B[idx], A[idx], kmax, seed=1_000_003 * (j + 1) + zlib.crc32(module.encode()))
            for add_mean in add_means:
                for k in ks:
                    k_eff = min(k, fbasis.u_a.shape[1], fbasis.u_b.shape[1])
                    yield recipe, add_mean, k, k_eff, project_factors(B[j], A[j], fbasis, k, add_mean)
        elif recipe == "product":
            fb = fitted.fit(idx, kmax)
            for add_mean in add_means:
                coords = fb.project(B[j:j + 1], A[j:j + 1], scaling=s[j:j + 1], center=add_mean)  # (1, k_fit)
                for k in ks:
                    k_eff = min(k, fb.k)
                    yield recipe, add_mean, k, k_eff, compact_product_pair(fb, coords[:, :k_eff], add_mean, float(s[j]))
        else:
            raise ValueError(f"recipe must be one of {RECIPES + CONTROLS}, got {recipe!r}")


def loo_reconstructions(stack: LoraStack, heldout: Iterable[int], ks: Sequence[int] = K_GRID,
                        recipes: Sequence[str] = RECIPES, add_means: Sequence[bool] = (False, True),
                        device=None, num_threads: int | None = None) -> dict:
    """Reconstructions of each held-out adapter from a subspace fitted on the N-1 others.

    Returns ``{(j, recipe, add_mean, k): (state, k_eff)}``: PEFT-keyed float64 states (the adapter's own
    scaling) and ``k_eff``, the fewest basis vectors used in any module (and, for "factors", either side):
    k is capped at the rank the others allow, e.g. at d_out = 16 for the B of a GQA k/v projection."""
    heldout = list(heldout)
    _check_args(stack, heldout, ks, recipes)
    with thread_settings(num_threads):
        return _loo_reconstructions(stack, heldout, ks, recipes, add_means, device)


def _loo_reconstructions(stack, heldout, ks, recipes, add_means, device):
    out: dict = {}
    for module in stack.module_keys:
        B, A = stack.factors(module)
        fitted = ProductLeaveOneOut(B, A, stack.scalings, device) if "product" in recipes else None
        for j in heldout:
            for recipe, add_mean, k, k_eff, pair in _module_loo(B, A, stack.scalings, j, ks, recipes, add_means,
                                                                device, fitted, module):
                slot = out.setdefault((j, recipe, add_mean, k), [{}, k_eff])
                slot[0][module] = pair
                slot[1] = min(slot[1], k_eff)
    return {key: (join_lora_state(pairs, ACCUM_DTYPE), k_eff) for key, (pairs, k_eff) in out.items()}


def mean_of_others(stack: LoraStack, j: int, num_threads: int | None = None) -> dict[str, torch.Tensor]:
    """PEFT-keyed state of ``M = mean_{i != j} s_i B_i A_i`` in adapter j's scaling (an exact compact pair),
    computed on ``num_threads`` torch threads (None: unchanged)."""
    if not 0 <= j < len(stack):
        raise IndexError(f"held-out index {j} outside 0..{len(stack) - 1}")
    with thread_settings(num_threads):
        return _mean_of_others(stack, j)


def _mean_of_others(stack, j):
    idx = indices_without(len(stack), j)
    w = torch.as_tensor(stack.scalings[idx] / (len(idx) * stack.scalings[j]))
    pairs = {}
    for module in stack.module_keys:
        B, A = stack.factors(module)
        b_cat = (B[idx] * w[:, None, None]).permute(1, 0, 2).reshape(B.shape[1], -1)  # (d_out, n r)
        pairs[module] = compact_lora_pair(b_cat, A[idx].reshape(-1, A.shape[2]))  # A (n r, d_in)
    return join_lora_state(pairs, ACCUM_DTYPE)


def loo_relative_errors(stack: LoraStack, heldout: Iterable[int] | None = None, ks: Sequence[int] = K_GRID,
                        recipes: Sequence[str] = RECIPES, add_means: Sequence[bool] = (False, True),
                        device=None, num_threads: int | None = None) -> pd.DataFrame:
    """Weight-space error ``||Delta_hat - Delta||_F / ||Delta||_F`` of each held-out adapter over all modules.

    Columns: adapter, recipe, add_mean, k, k_eff, rel_error. Computed by r x r traces and inner products
    (no d_out x d_in matrix), module by module, so it runs on the paper-scale adapters."""
    heldout = list(range(len(stack))) if heldout is None else list(heldout)
    _check_args(stack, heldout, ks, recipes)
    with thread_settings(num_threads):
        return _loo_relative_errors(stack, heldout, ks, recipes, add_means, device)


def _loo_relative_errors(stack, heldout, ks, recipes, add_means, device):
    err: dict = {}
    norm = np.zeros(len(heldout))
    for module in stack.module_keys:
        B, A = stack.factors(module)
        s = stack.scalings
        fitted = ProductLeaveOneOut(B, A, s, device) if "product" in recipes else None
        for h, j in enumerate(heldout):
            norm[h] += s[j] ** 2 * _pair_sq_norm(B[j], A[j])
            for recipe, add_mean, k, k_eff, sq in _module_loo_sq_errors(B, A, s, j, ks, recipes, add_means,
                                                                        device, fitted, module):
                e = err.setdefault((recipe, add_mean, k), [np.zeros(len(heldout)), k_eff])
                e[0][h] += sq
                e[1] = min(e[1], k_eff)
    rows = [dict(adapter=stack.names[j], recipe=r, add_mean=m, k=k, k_eff=int(ke),
                 rel_error=float(np.sqrt(v[h] / norm[h])))
            for (r, m, k), (v, ke) in err.items() for h, j in enumerate(heldout)]
    return pd.DataFrame(rows)


def _module_loo_sq_errors(B, A, s, j, ks, recipes, add_means, device, fitted, module):
    """Yield ``(recipe, add_mean, k, k_eff, ||Delta_hat - Delta||_F^2)`` for held-out j in one module.

    "factors" from the projected pairs by r x r traces; "product" from its coordinates:
    ``||P - M||^2 - sum_{l<k} c_l^2`` (with mean) or ``||P||^2 - sum_{l<k} c_l^2`` (without)."""
    for recipe in recipes:
        if recipe != "product":
            b, a = B[j].to(ACCUM_DTYPE), A[j].to(ACCUM_DTYPE)
            for recipe_, add_mean, k, k_eff, (bh, ah) in _module_loo(B, A, s, j, ks, (recipe,), add_means, device,
                                                                     module=module):
                yield recipe_, add_mean, k, k_eff, s[j] ** 2 * _pair_sq_dist(b, a, bh, ah)
            continue
        idx = indices_without(B.shape[0], j)
        fb = fitted.fit(idx, max(ks))
        p_sq = float(fitted.gram[j, j])  # ||P_j||^2
        pm, m_sq = float(fitted.gram[idx, j].mean()), float(fb.gram.mean())  # <P_j, M>, ||M||^2
        for add_mean in add_means:
            c = fb.project(B[j:j + 1], A[j:j + 1], scaling=s[j:j + 1], center=add_mean)[0]  # (k_fit,)
            total = p_sq - 2 * pm + m_sq if add_mean else p_sq
            cum = np.concatenate([[0.0], np.cumsum((c ** 2).cpu().numpy())])
            for k in ks:
                k_eff = min(k, fb.k)
                yield recipe, add_mean, k, k_eff, max(total - cum[k_eff], 0.0)


def _check_args(stack, heldout, ks, recipes):
    bad = [r for r in recipes if r not in RECIPES + CONTROLS]
    if bad:
        raise ValueError(f"recipe must be one of {RECIPES + CONTROLS}, got {bad[0]!r}")
    if not ks or min(ks) < 0:
        raise ValueError(f"ks must be non-empty and >= 0, got {ks!r}")
    if len(stack) < 3:
        raise ValueError(f"leave-one-out needs at least 3 adapters, got {len(stack)}")
    for j in heldout:
        if not 0 <= j < len(stack):
            raise IndexError(f"held-out index {j} outside 0..{len(stack) - 1}")
