"""The data loaders of notebook 05 (uws_core.experiments.adaptation_data) on tiny seeded tensors."""

import pandas as pd
import pytest
import torch

from uws_core.experiments.adaptation import task_vector_basis
from uws_core.experiments.adaptation_data import held_out_lora_tasks, vit_adaptation_paper, vit_task_vector_bases


def test_vit_task_vector_bases_are_those_of_the_task_vectors():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(6, 5, generator=g), "u": torch.randn(4, 8, generator=g)}
    fits = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(4)]
    basis, mean = vit_task_vector_bases(base, fits, ["w", "u"], k_max=3, k_model=2)
    for key in ("w", "u"):
        updates = torch.stack([f[key] - base[key] for f in fits])        # (4, d_out, d_in)
        want_basis, want_mean = task_vector_basis(updates, 3, "rows")
        assert torch.equal(basis[key], want_basis) and torch.equal(mean[key], want_mean)
        torch.testing.assert_close(mean[key], updates.mean(0), rtol=0, atol=1e-6)
        assert basis["model", key].shape == (base[key].numel(), 2)
        torch.testing.assert_close(basis["model", key].T @ basis["model", key], torch.eye(2), rtol=0, atol=1e-5)


def test_held_out_lora_tasks_take_the_lowest_base_accuracy_in_the_window():
    rec = pd.DataFrame({"task": list("abcdef"), "base_acc": [0.05, 0.5, 0.2, 0.2, 0.3, 0.7],
                        "adapter_acc": [1.0, 0.95, 0.95, 0.92, 0.5, 1.0]})
    assert held_out_lora_tasks(rec, 2) == ["c", "d"]            # a below 10%, e's adapter < 90%, f above 60%
    assert held_out_lora_tasks(rec, 5) == ["c", "d", "b"]


def test_vit_adaptation_paper_needs_the_folder():
    with pytest.raises(ValueError, match="UWS_VIT_DIR"):
        vit_adaptation_paper(None)
