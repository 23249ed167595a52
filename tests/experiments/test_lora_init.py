import numpy as np
import pytest
import torch

from uws_core.experiments.lora_init import cosine_similarity_matrix, shared_init_groups


def _population(n_shared=5, n_own=7, r=4, d=64, drift=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    init = torch.randn(r, d, generator=g, dtype=torch.float64)
    shared = [init + drift * torch.randn(r, d, generator=g, dtype=torch.float64) for _ in range(n_shared)]
    own = [torch.randn(r, d, generator=g, dtype=torch.float64) for _ in range(n_own)]
    return torch.stack(own[:3] + shared + own[3:])                       # shared group in the middle


def test_shared_group_is_found_and_numbered_first():
    A = _population()
    labels = shared_init_groups(A)
    np.testing.assert_array_equal(labels[3:8], 0)                        # the 5 shared adapters
    assert len(set(labels[:3].tolist() + labels[8:].tolist())) == 7       # each of the rest alone
    assert 0 not in labels[:3] and 0 not in labels[8:]


def test_cosine_matrix_is_symmetric_with_unit_diagonal():
    sim = cosine_similarity_matrix(_population())
    np.testing.assert_allclose(sim, sim.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-12)
    off = sim[np.triu_indices(3, 1)]                                      # independent inits
    assert np.abs(off).max() < 0.2


def test_zero_A_is_refused():
    A = _population()
    A[2] = 0
    with pytest.raises(ValueError, match="adapter 2 has an all-zero lora_A"):
        shared_init_groups(A)
