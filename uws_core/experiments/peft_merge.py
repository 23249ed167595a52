"""peft's LoRA merges (``LoraModel.add_weighted_adapter``) in uws terms, for like-for-like comparisons.

peft (``tuners/lora/model.py``, 0.21) merges LoRAs in four ways this project compares with:

* "linear" / "ties" / "dare_linear": each factor stack on its own, task i weighted by ``sqrt(|w_i s_i|)``
  (s_i = alpha_i / r; the sign on A), the new adapter getting lora_alpha = r (scaling 1):
  :func:`peft_factor_merge`. "linear" with w_i = 1/K and one scaling s gives ``K s mean(B) mean(A)``: K times
  uws's "mean of A and B separately" (:func:`uws_core.experiments.merging.mean_merge` on PEFT states, update
  ``s mean(B) mean(A)``). "dare_linear" at density 1 is "linear" (its mask comes from torch's global generator);
* "cat": the factors side by side with ``w_i s_i`` on A: update ``sum_i w_i s_i B_i A_i``
  = :func:`uws_core.experiments.merging.task_arithmetic` of the scaled products with ``lam = w``;
* "svd": the best rank-r approximation of that sum (:func:`uws_core.weights.peft_state.lora_pair_from_dense` with
  ``max_rank = r``).
"""

from __future__ import annotations

import numpy as np
import torch

from uws_core.experiments.merging import ties_tensor

__all__ = ["peft_factor_merge"]


def peft_factor_merge(B: torch.Tensor, A: torch.Tensor, weights, scalings, how: str = "linear",
                      density: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """peft's ``add_weighted_adapter`` "linear" / "ties" for one module, as an exact pair with scaling 1.

    B (n, d_out, r), A (n, r, d_in) as stored; ``weights`` (n,) the merge weights w_i; ``scalings`` (n,) alpha_i / r.
    Each factor stack is merged on its own with per-task weights ``sqrt(|w_i s_i|)`` (the sign of w_i s_i on A):
    "linear" sums them, "ties" runs TIES (peers' convention, weights after election) at ``density``
    (peft ``tuners/lora/model.py`` ``_generalized_task_arithmetic_weighted_adapter``). Returns (B_m, A_m); the
    merged update is ``B_m @ A_m`` (peft gives the new adapter lora_alpha = r)."""
    ws = np.asarray(weights, dtype=np.float64) * np.asarray(scalings, dtype=np.float64)
    root = torch.as_tensor(np.sqrt(np.abs(ws)))
    w_a, w_b = root * torch.as_tensor(np.where(ws >= 0, 1.0, -1.0)), root
    b, a = B.to(torch.float64), A.to(torch.float64)
    if how == "linear":
        return (b * w_b.view(-1, 1, 1)).sum(0), (a * w_a.view(-1, 1, 1)).sum(0)
    if how == "ties":
        return ties_tensor(b, density, weights=w_b), ties_tensor(a, density, weights=w_a)
    raise ValueError(f"how must be 'linear' or 'ties', got {how!r}")
