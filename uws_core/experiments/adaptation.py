"""Coefficient-only adaptation on a frozen basis (the authors' "SubspaceAdapter"), with its baselines,
for many small runs at once.

A run adapts a frozen base model to one task. For every adapted weight key (a matrix ``W_base`` of shape
``(d_out, d_in)``) the weight the model sees is

* ``subspace``, rows unfolding (the authors' full-model recipe): ``W = W_base + S + C U^T`` with ``U``
  ``(d_in, k)`` a frozen input-side basis and ``C`` ``(d_out, k)`` trainable: ``d_out * k`` parameters;
* ``subspace``, cols unfolding: ``W = W_base + S + U C``, ``U`` ``(d_out, k)`` output-side, ``C`` ``(k, d_in)``:
  ``k * d_in`` parameters;
* ``subspace``, model axis (the replication's "k coefficients per module"): ``W = W_base + S + mat(V c)``,
  ``V`` ``(d_out * d_in, k)``, ``c`` ``(k,)``: ``k`` parameters;
* ``lora`` of rank r: ``W = W_base + S + s B A``, ``A`` ``(r, d_in)`` (PEFT's kaiming-uniform init), ``B``
  ``(d_out, r)`` zero: ``r (d_in + d_out)`` parameters;
* ``full``: ``W = W_base + S + D``, ``D`` ``(d_out, d_in)`` trainable, zero at the start;

where ``S`` is a frozen start offset: zero ("basis only") or the mean of the other models' updates ("with the
mean"). Any other key can be made trainable as a whole (a classification head). Coefficients start at 0, so
every run starts at ``W_base + S``.

Every tensor carries a leading run axis ``G``: :class:`Adapter` holds G runs of one model, possibly with
per-run bases and offsets (``(G, d, k)``), and :func:`fit_runs` trains them together with Adam on the sum
of the per-run losses, each with its own learning rate. Adam is elementwise, so every run follows the
trajectory it would follow alone (up to float round-off). The model is any function of a name-keyed weight
dict: :func:`uws_core.zoo.vit_model.vit_logits` for the ViT (batched natively), or a ``torch.nn.Module`` through
:func:`functional_forward` (``torch.func.functional_call`` under ``torch.func.vmap``) for the tiny Mistral.

:func:`task_vector_basis` and :func:`random_basis` give the frozen bases; :func:`sweep_then_seeds` is the
protocol (learning rate chosen on validation with one seed, then every seed at that rate). The data, losses
and accuracies of runs on the two laptop populations are in :mod:`uws_core.experiments.adaptation_tasks`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from uws_core.linalg.spectral import UNFOLDINGS, stack_spectrum
from uws_core.linalg.subspace import random_orthonormal_basis
from uws_core.zoo.lr_schedule import warmup_cosine_factor as lr_factor

__all__ = ["UNFOLDINGS", "subspace_update", "lora_update", "Adapter", "lr_factor", "fit_runs", "functional_forward",
           "task_vector_basis", "random_basis", "trainable_parameter_count", "sweep_then_seeds"]



def subspace_update(coef: torch.Tensor, basis: torch.Tensor, unfolding: str, shape: tuple[int, int]) -> torch.Tensor:
    """The update spanned by a basis: rows ``C U^T``, cols ``U C``, model ``mat(V c)``.

    coef: rows (G, d_out, k), cols (G, k, d_in), model (G, k); basis: (d, k) shared or (G, d, k) per run,
    d = d_in (rows), d_out (cols), d_out*d_in (model). Returns (G, d_out, d_in).
    """
    if unfolding == "rows":
        return coef @ basis.transpose(-1, -2)                                     # (G, d_out, k) (.., k, d_in)
    if unfolding == "cols":
        return basis @ coef                                                       # (.., d_out, k) (G, k, d_in)
    if unfolding == "model":
        return (basis @ coef.unsqueeze(-1)).reshape(coef.shape[0], *shape)       # (.., D, k) (G, k, 1)
    raise ValueError(f"unfolding must be one of {UNFOLDINGS}, got {unfolding!r}")


def lora_update(b: torch.Tensor, a: torch.Tensor, scaling: float) -> torch.Tensor:
    """``scaling * B @ A``: B (G, d_out, r), A (G, r, d_in) -> (G, d_out, d_in)."""
    return scaling * (b @ a)


def _basis_dim(unfolding: str, shape: tuple[int, int]) -> int:
    d_out, d_in = shape
    return {"rows": d_in, "cols": d_out, "model": d_out * d_in}[unfolding]


class Adapter:
    """G runs of one frozen base model, each adapting some weight keys (see the module docstring).

    Parameters
    ----------
    base : dict name -> tensor, the frozen weights (cloned, float32, never trained)
    n_runs : G, the number of runs held together
    """

    def __init__(self, base: dict[str, torch.Tensor], n_runs: int):
        if n_runs < 1:
            raise ValueError(f"n_runs must be >= 1, got {n_runs}")
        self.base = {k: v.detach().to(torch.float32).clone() for k, v in base.items()}
        self.n_runs = int(n_runs)
        self.params: dict[str, torch.Tensor] = {}      # trainable leaves, each (G, ...)
        self.frozen: dict[str, torch.Tensor] = {}      # bases, basis indices, start offsets: never trained
        self.kinds: dict[str, tuple] = {}              # key -> (kind, unfolding or scaling)
        self._counts: dict[str, np.ndarray] = {}       # param name -> trainable numbers per run (G,)

    # ------------------------------------------------------------------ building
    def _check_key(self, key: str, matrix: bool = True) -> tuple[int, ...]:
        if key not in self.base:
            raise KeyError(f"weight key {key!r} is not in the base model (it has e.g. {sorted(self.base)[:3]})")
        if key in self.kinds:
            raise KeyError(f"weight key {key!r} is adapted twice")
        shape = tuple(self.base[key].shape)
        if matrix and len(shape) != 2:
            raise ValueError(f"weight key {key!r} has shape {shape}; only matrices (d_out, d_in) can be adapted")
        return shape

    def _per_run(self, name: str, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """A frozen tensor shared by all runs ``shape`` or given per run ``(G, *shape)``; float32 copy."""
        t = torch.as_tensor(t).detach().to(torch.float32)
        if tuple(t.shape) not in (shape, (self.n_runs, *shape)):
            raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {shape} or ({self.n_runs}, *{shape})")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: non-finite values")
        return t.clone()

    def _start(self, key, start, shape):
        if start is not None:
            self.frozen[f"{key}:start"] = self._per_run(f"start offset of {key!r}", start, shape)

    def _param(self, name: str, t: torch.Tensor, per_run: int | np.ndarray) -> None:
        self.params[name] = t.detach().to(torch.float32).clone().requires_grad_()
        self._counts[name] = np.broadcast_to(np.asarray(per_run, dtype=np.int64), (self.n_runs,)).copy()

    def add_subspace(self, key: str, basis: torch.Tensor, unfolding: str = "rows", start=None, index=None) -> None:
        """Train only coefficients on the frozen ``basis`` ((d, k) or (G, d, k)) of ``key``; see the module
        docstring for the shapes per unfolding. ``start``: frozen offset S ((d_out, d_in) or per run).
        ``index`` (G,): run g uses ``basis[index[g]]`` of a stack (n_bases, d, k), so runs that share a basis
        share its memory (a model-axis basis per run is d_out*d_in*k numbers)."""
        shape = self._check_key(key)
        if unfolding not in UNFOLDINGS:
            raise ValueError(f"unfolding must be one of {UNFOLDINGS}, got {unfolding!r} (key {key!r})")
        d = _basis_dim(unfolding, shape)
        b = torch.as_tensor(basis)
        if b.ndim not in (2, 3) or b.shape[-2] != d:
            raise ValueError(f"basis for {key!r} ({unfolding}) must be (d={d}, k) or (G, {d}, k), got {tuple(b.shape)}")
        k = int(b.shape[-1])
        if index is not None:
            idx = torch.as_tensor(index, dtype=torch.long)
            if b.ndim != 3 or idx.shape != (self.n_runs,) or int(idx.min()) < 0 or int(idx.max()) >= b.shape[0]:
                raise ValueError(f"index for the bases of {key!r} must be (G={self.n_runs},) into {b.shape[0]} "
                                 f"stacked bases, got {tuple(idx.shape)}")
            self.frozen[f"{key}:basis"] = b.detach().to(torch.float32).clone()
            self.frozen[f"{key}:basis_index"] = idx.clone()
            if not bool(torch.isfinite(self.frozen[f"{key}:basis"]).all()):
                raise ValueError(f"basis of {key!r}: non-finite values")
        else:
            self.frozen[f"{key}:basis"] = self._per_run(f"basis of {key!r}", b, tuple(b.shape[-2:]))
        self._start(key, start, shape)
        coef_shape = {"rows": (shape[0], k), "cols": (k, shape[1]), "model": (k,)}[unfolding]
        self._param(f"{key}:coef", torch.zeros(self.n_runs, *coef_shape), int(np.prod(coef_shape)))
        self.kinds[key] = ("subspace", unfolding)

    def add_lora(self, key: str, rank: int, scaling: float, seeds, start=None) -> None:
        """A fresh rank-``rank`` LoRA per run: A ~ U(+-1/sqrt(d_in)) drawn from ``seeds[g]`` (PEFT's default),
        B = 0, update ``scaling * B A``."""
        d_out, d_in = self._check_key(key)
        if rank < 1 or len(seeds) != self.n_runs:
            raise ValueError(f"LoRA on {key!r}: need rank >= 1 and one seed per run, "
                             f"got rank {rank}, {len(seeds)} seeds")
        self._start(key, start, (d_out, d_in))
        a = torch.stack([(torch.rand(rank, d_in, generator=torch.Generator().manual_seed(int(s))) * 2 - 1)
                         / math.sqrt(d_in) for s in seeds])                      # (G, r, d_in)
        self._param(f"{key}:lora_A", a, rank * d_in)
        self._param(f"{key}:lora_B", torch.zeros(self.n_runs, d_out, rank), d_out * rank)
        self.kinds[key] = ("lora", float(scaling))

    def add_full(self, key: str, start=None) -> None:
        """Every entry of ``key`` trainable, as an update D (G, d_out, d_in) starting at zero."""
        shape = self._check_key(key)
        self._start(key, start, shape)
        self._param(f"{key}:delta", torch.zeros(self.n_runs, *shape), int(np.prod(shape)))
        self.kinds[key] = ("full", None)

    def add_trainable(self, key: str, init: torch.Tensor, counted=None) -> None:
        """Replace ``key`` by a trainable tensor ``init`` (G, ...) (e.g. a fresh head per run). ``counted``:
        trainable numbers per run when ``init`` is padded (heads of tasks with fewer classes)."""
        self._check_key(key, matrix=False)
        if init.shape[0] != self.n_runs or init.ndim != self.base[key].ndim + 1:
            raise ValueError(f"init of {key!r} must be (G={self.n_runs}, ...), got {tuple(init.shape)}")
        self._param(f"{key}:value", init, int(np.prod(init.shape[1:])) if counted is None else counted)
        self.kinds[key] = ("value", None)

    # ------------------------------------------------------------------ using
    def update(self, key: str) -> torch.Tensor:
        """The trained update of ``key`` (G, d_out, d_in), without the start offset."""
        kind, how = self.kinds[key]
        shape = tuple(self.base[key].shape)
        if kind == "subspace":
            coef, basis = self.params[f"{key}:coef"], self.frozen[f"{key}:basis"]
            idx = self.frozen.get(f"{key}:basis_index")
            if idx is None:
                return subspace_update(coef, basis, how, shape)
            sel = [torch.nonzero(idx == j).squeeze(1) for j in range(basis.shape[0])]
            parts = [subspace_update(coef[s], basis[j], how, shape) for j, s in enumerate(sel) if len(s)]
            return torch.cat(parts)[torch.argsort(torch.cat([s for s in sel if len(s)]))]  # back in run order
        if kind == "lora":
            return lora_update(self.params[f"{key}:lora_B"], self.params[f"{key}:lora_A"], how)
        if kind == "full":
            return self.params[f"{key}:delta"]
        raise KeyError(f"key {key!r} is replaced as a whole, it has no update")

    def weights(self, with_frozen: bool = True) -> dict[str, torch.Tensor]:
        """Name-keyed weights of the G runs, each (G, ...); frozen keys are broadcast views of the base
        (``with_frozen=False`` leaves them out, for ``functional_call(..., strict=False)``)."""
        out = {}
        for key, w in self.base.items():
            kind = self.kinds.get(key, (None,))[0]
            if kind is None:
                if with_frozen:
                    out[key] = w.expand(self.n_runs, *w.shape)
            elif kind == "value":
                out[key] = self.params[f"{key}:value"]
            else:
                start = self.frozen.get(f"{key}:start")
                out[key] = w + self.update(key) + (0.0 if start is None else start)
        return out

    def n_trainable(self) -> np.ndarray:
        """Trainable numbers per run (G,) int64."""
        return sum(self._counts.values(), np.zeros(self.n_runs, dtype=np.int64))


# ------------------------------------------------------------------------------------------ training

def fit_runs(adapter: Adapter, loss_fn, steps: int, lrs, warmup_frac: float = 0.1, betas=(0.9, 0.999),
             eps: float = 1e-8) -> np.ndarray:
    """Train the G runs of ``adapter`` together with Adam (no weight decay); returns losses (steps, G).

    ``loss_fn(weights, step)`` gets :meth:`Adapter.weights` and returns the per-run losses (G,); the
    gradient of their sum reaches each run's own parameters only, and Adam's update is elementwise, so
    run g follows its own trajectory with learning rate ``lrs[g]`` (schedule :func:`lr_factor`).
    """
    g = adapter.n_runs
    lr = torch.as_tensor(np.asarray(lrs, dtype=np.float64), dtype=torch.float32)
    if lr.shape != (g,):
        raise ValueError(f"need one learning rate per run ({g}), got {tuple(lr.shape)}")
    m1 = {n: torch.zeros_like(p) for n, p in adapter.params.items()}
    m2 = {n: torch.zeros_like(p) for n, p in adapter.params.items()}
    b1, b2 = betas
    losses = np.zeros((steps, g))
    for step in range(steps):
        for p in adapter.params.values():
            p.grad = None
        per_run = loss_fn(adapter.weights(), step)
        if per_run.shape != (g,):
            raise ValueError(f"loss_fn must return one loss per run ({g},), got {tuple(per_run.shape)}")
        per_run.sum().backward()
        rate = lr * lr_factor(step, steps, warmup_frac)
        with torch.no_grad():
            for n, p in adapter.params.items():
                m1[n].mul_(b1).add_(p.grad, alpha=1 - b1)
                m2[n].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                upd = (m1[n] / (1 - b1 ** (step + 1))) / ((m2[n] / (1 - b2 ** (step + 1))).sqrt() + eps)
                p.sub_(rate.view(g, *(1,) * (p.ndim - 1)) * upd)
        losses[step] = per_run.detach().double().numpy()
    return losses


def functional_forward(module: torch.nn.Module, weights: dict[str, torch.Tensor], *args, output=None,
                       kwargs: dict | None = None):
    """``module``'s forward with G weight sets at once: ``vmap(functional_call)`` over the leading axis of
    ``weights`` (adapted keys only; the module's own parameters fill the rest) and of every ``args`` tensor.
    ``output`` picks tensors from the module's output inside the vmap (e.g. ``lambda o: o.logits``);
    ``kwargs`` go to every call unbatched. Needs a forward vmap can batch (transformers: eager attention)."""
    names = list(weights)

    def one(ws, *a):
        out = torch.func.functional_call(module, dict(zip(names, ws)), a, kwargs or {}, strict=False)
        return out if output is None else output(out)

    return torch.func.vmap(one)(tuple(weights[n] for n in names), *args)


# ------------------------------------------------------------------------------------------ bases

def task_vector_basis(updates, k: int, unfolding: str = "rows") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k basis of N models' updates of one key and their mean update.

    ``updates`` (N, d_out, d_in) are the models' task vectors ``W_i - W_base`` (or LoRA products ``s B_i A_i``).
    The stack is centred by the cross-model mean matrix and one unfolding's top-k right singular vectors are
    kept (dense float64 SVD, :func:`uws_core.linalg.spectral.stack_spectrum`): rows (N*d_out, d_in) -> (d_in, k),
    cols (N*d_in, d_out) -> (d_out, k), model (N, d_out*d_in) -> (d_out*d_in, k). k above the rank of the
    centred unfolding is an error. Returns (basis float32, mean update float32 (d_out, d_in)).
    """
    spec = stack_spectrum(updates, unfolding=unfolding, center="models", k=k)
    if spec.basis is None or spec.basis.shape[1] < k:
        raise ValueError(f"k={k} exceeds the {spec.n_components} components of the {unfolding} unfolding "
                         f"of {spec.n_models} updates of shape {spec.matrix_shape}")
    return spec.basis.to(torch.float32), spec.mean.to(torch.float32)


def random_basis(d: int, k: int, seed: int) -> torch.Tensor:
    """The null: a Haar-random orthonormal (d, k) basis, float32."""
    return random_orthonormal_basis(d, k, seed=seed).to(torch.float32)


def trainable_parameter_count(method: str, shapes: dict, k: int = 0, unfolding: str = "rows") -> int:
    """Trainable numbers of one run over the adapted matrices ``shapes`` (key -> (d_out, d_in)), heads not
    counted: ``subspace`` (rows d_out k, cols k d_in, model k), ``lora`` (rank k: k (d_out + d_in)), ``full``
    (d_out d_in), ``head`` (0)."""
    per = {"subspace": lambda o, i: {"rows": o * k, "cols": k * i, "model": k}[unfolding],
           "lora": lambda o, i: k * (o + i), "full": lambda o, i: o * i, "head": lambda o, i: 0}
    if method not in per or unfolding not in UNFOLDINGS:
        raise ValueError(f"unknown method {method!r} or unfolding {unfolding!r}; methods: {sorted(per)}")
    return int(sum(per[method](int(o), int(i)) for o, i in shapes.values()))


# ------------------------------------------------------------------------------------------ protocol

def sweep_then_seeds(train, groups: dict, tasks, lrs: dict, seeds):
    """Learning rate chosen on validation with the first seed, then every seed at the chosen rate.

    ``groups``: (method, k) -> variants; each group's runs share one :class:`Adapter`. ``train(method, k,
    runs)`` trains a list of runs (dicts with task, variant, lr, seed) and returns a DataFrame with one row
    per run holding at least those fields and ``val``. Stage 1 runs every ``lrs[method]`` with ``seeds[0]``;
    per (method, k, variant, task) the rate with the best validation accuracy is kept (ties: the first
    listed); stage 2 runs ``seeds[1:]`` at that rate. Returns (stage-1 rows, final rows for all seeds).
    """
    import pandas as pd

    def runs_of(variants, lr_list, seed_list):
        return [dict(task=t, variant=v, lr=lr, seed=s) for v in variants for t in tasks for lr in lr_list
                for s in seed_list]

    stage1 = pd.concat([train(m, k, runs_of(vs, lrs[m], seeds[:1])) for (m, k), vs in groups.items()],
                       ignore_index=True)
    best = stage1.loc[stage1.groupby(["method", "k", "variant", "task"], sort=False)["val"].idxmax()]
    more = []
    for (m, k), rows in best.groupby(["method", "k"], sort=False):
        runs = [dict(task=r.task, variant=r.variant, lr=r.lr, seed=s) for r in rows.itertuples() for s in seeds[1:]]
        if runs:
            more.append(train(m, k, runs))
    return stage1, pd.concat([best, *more], ignore_index=True)
