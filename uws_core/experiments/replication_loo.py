"""The replication's own LoRA reconstruction quantities, so that notebook 08 compares like with like.

cahlen/universal-subspace-stress-test (@ dd57f0c) reports three things about B@A reconstructions, each a
different quantity (its dW = B @ A is not scaled by alpha/r; ``scaling="none"`` below does the same):

* **in-sample error** (``experiments/phase1_lora_spectral/analyze.py`` L138-148; ``phase1_report.json``
  ``recon_err``, median 0.7505 at k = 16): per module, the basis fitted on *all* N adapters, the mean added
  back, ``sqrt(sum_{i>k} s_i^2 / ||X||_F^2)`` over the N adapters of that module -> :func:`in_sample_relative_errors`;
* **leave-one-out error** (``task_accuracy_test.py`` L53-96; ``task_acc_summary.json`` ``weight_rel_err``,
  N_fit = 99): the held-out adapter's mean + top-k reconstruction from the others, pooled over all modules,
  ``sqrt(sum ||dW - recon||^2 / sum ||dW||^2)`` -> :func:`loo_relative_errors`;
* **"basis only"** (``mean_vs_basis.py`` L210-219): ``V_k V_k^T (dW - M)`` with M the others' mean: the
  centred projection *without* the mean added back. It is not uws's "no mean" reconstruction ``V V^T dW``
  (:mod:`uws_core.experiments.lora_projection`, the authors' convention of projecting the raw update) ->
  :func:`basis_only_reconstructions`, evaluated by :func:`basis_only_accuracy`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from uws_core.linalg import recipes
from uws_core.linalg.device import ACCUM_DTYPE
from uws_core.experiments.lora_projection import LoraStack, ProductLeaveOneOut, compact_product_pair, indices_without
from uws_core.linalg.numerics import thread_settings
from uws_core.experiments.lora_projection import loo_relative_errors as _lp_loo_relative_errors
from uws_core.weights.peft_state import join_lora_state

__all__ = ["BASIS_ONLY", "with_scaling", "in_sample_relative_errors", "loo_relative_errors",
           "basis_only_reconstructions", "basis_only_accuracy"]

BASIS_ONLY = "product_basis_only"  # recipe label of V V^T (P - M) in result tables


def with_scaling(stack: LoraStack, scaling: str) -> LoraStack:
    """The same adapters with their own alpha/r (``"alpha-over-r"``) or with unit scaling (``"none"``: B @ A
    as stored, the replication's dW)."""
    s = recipes.product_scaling(scaling, stack.scalings)
    return stack if s is not None else LoraStack(stack.names, stack.module_keys, stack.shapes,
                                                  np.ones(len(stack)), stack.factors)


def in_sample_relative_errors(stack: LoraStack, ks: Sequence[int] = (1, 4, 16, 32, 64), scaling: str = "none",
                              device=None) -> pd.DataFrame:
    """Per module, the replication's in-sample error of mean + top-k over its N adapters (analyze.py L138-148).

    Columns: module, k, rel_error. The replication's headline is the median over modules at k = 16."""
    st = with_scaling(stack, scaling)
    rows = []
    for module in st.module_keys:
        b, a = st.factors(module)  # (N, d_out, r), (N, r, d_in)
        s = recipes.product_scaling(scaling, st.scalings)
        spec = recipes.replication(b, a, scaling=s, device=device, key=module)
        errs = recipes.replication_recon_errors(spec, recipes.lora_uncentred_norm_sq(b, a, s), ks)
        rows += [dict(module=module, k=k, rel_error=e) for k, e in errs.items()]
    return pd.DataFrame(rows)


def loo_relative_errors(stack: LoraStack, heldout: Iterable[int] | None = None, ks: Sequence[int] = (1, 4, 16, 32, 64),
                        scaling: str = "none", device=None, num_threads: int | None = None) -> pd.DataFrame:
    """Per held-out adapter, the replication's leave-one-out error of mean + top-k over all modules
    (task_accuracy_test.py L53-96). Columns: adapter, k, k_eff, rel_error."""
    df = _lp_loo_relative_errors(with_scaling(stack, scaling), heldout=heldout, ks=ks, recipes=("product",),
                                 add_means=(True,), device=device, num_threads=num_threads)
    return df[["adapter", "k", "k_eff", "rel_error"]].reset_index(drop=True)


def basis_only_reconstructions(stack: LoraStack, heldout: Iterable[int], ks: Sequence[int], device=None,
                               num_threads: int | None = None) -> dict:
    """``V_k V_k^T (P_j - M)`` of each held-out adapter j (V and M from the N-1 others, model axis, each
    adapter's own scaling): ``{(j, k): (PEFT-keyed float64 state in adapter j's scaling, k_eff)}``."""
    heldout, kmax = list(heldout), max(ks)
    if len(stack) < 3 or min(ks) < 0:
        raise ValueError(f"need >= 3 adapters and ks >= 0, got {len(stack)} adapters and ks {ks!r}")
    out: dict = {}
    with thread_settings(num_threads):
        for module in stack.module_keys:
            b, a = stack.factors(module)
            s = stack.scalings
            fitted = ProductLeaveOneOut(b, a, s, device)
            for j in heldout:
                fb = fitted.fit(indices_without(len(stack), j), kmax)
                coords = fb.project(b[j:j + 1], a[j:j + 1], scaling=s[j:j + 1], center=True)  # V^T (P_j - M)
                for k in ks:
                    k_eff = min(k, fb.k)
                    slot = out.setdefault((j, k), [{}, k_eff])
                    slot[0][module] = compact_product_pair(fb, coords[:, :k_eff], add_mean=False, s_out=float(s[j]))
                    slot[1] = min(slot[1], k_eff)
    return {key: (join_lora_state(pairs, ACCUM_DTYPE), k_eff) for key, (pairs, k_eff) in out.items()}


def basis_only_accuracy(pop, ks: Sequence[int], tasks: Sequence[str] | None = None, split: str = "test") -> pd.DataFrame:
    """Accuracy of the basis-only reconstructions on each held-out task of a laptop LoRA population, in the
    long format of :func:`uws_core.experiments.lora_loo_accuracy.loo_reconstruction_accuracy` (recipe ``BASIS_ONLY``)."""
    from uws_core.experiments.lora_loo_accuracy import population_stack

    records, stack, heldout = population_stack(pop, tasks)
    recon = basis_only_reconstructions(stack, heldout, ks, num_threads=pop.config.num_threads)
    return pd.DataFrame([dict(task=records.at[j, "task"], adapter=records.at[j, "adapter"], method="reconstruction",
                              recipe=BASIS_ONLY, add_mean=False, k=k, k_eff=k_eff,
                              accuracy=pop.evaluate(records.at[j, "task"], state, split=split))
                         for (j, k), (state, k_eff) in recon.items()])
