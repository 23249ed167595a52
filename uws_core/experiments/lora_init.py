"""Find LoRA adapters that started from one identical initialisation of A.

PEFT initialises ``lora_A`` at random and ``lora_B`` at zero, and training moves A only a little;
adapters trained from the same seed therefore keep nearly parallel A matrices. About 197 of the 500
public Mistral-7B adapters share one such initialisation (paper digest, section 4), and only that group
shows a low-dimensional A subspace. This module recovers the groups from the weights alone, so the
same analysis runs on adapters whose training seeds are unknown.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.csgraph import connected_components


def cosine_similarity_matrix(A) -> np.ndarray:
    """Cosine similarity of the flattened A factors, (N, N) float64.

    ``A`` is the stack (N, r, d_in) of one module key; each A_i is flattened to r*d_in entries.
    Rank components of a LoRA are only defined up to their order, but adapters that share an
    initialisation keep the same order, so the plain flattened inner product is the right test.
    """
    a = torch.as_tensor(A, dtype=torch.float64).flatten(1)              # (N, r*d_in)
    norms = a.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        bad = int(torch.nonzero(norms.squeeze(1) == 0)[0])
        raise ValueError(f"adapter {bad} has an all-zero lora_A; cannot compare initialisations")
    a = a / norms
    return (a @ a.T).numpy()


def shared_init_groups(A, threshold: float = 0.5) -> np.ndarray:
    """Label adapters by shared A initialisation: connected components of cos(A_i, A_j) > threshold.

    Returns an int array (N,) of group labels, numbered by decreasing group size (0 = largest).
    Independent random inits of r*d_in entries have |cos| about 1/sqrt(r*d_in), far below 0.5.
    """
    sim = cosine_similarity_matrix(A)
    n, labels = connected_components(sim > threshold, directed=False)
    sizes = np.bincount(labels, minlength=n)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(n)
    return rank[labels]
