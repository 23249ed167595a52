"""The ViT model of the laptop populations: checkpoint keys, batched forward, seeded init, training."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file

from uws_core.zoo.vit_model import evaluate_states, init_state, save_vit, train_models, vit_logits
from uws_core.zoo.vit_tasks import task_data
from uws_core.zoo.vit_zoo import VitZooConfig

TINY = VitZooConfig.tiny()
QUERY0 = "vit.encoder.layer.0.attention.attention.query.weight"

def test_functional_forward_equals_transformers_and_keys_are_google_names(tmp_path):
    from transformers import ViTForImageClassification

    gen = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in init_state(TINY, 3, seed=1).items()}
    save_vit(state, tmp_path / "m", TINY)
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert QUERY0 in saved and "vit.encoder.layer.0.output.dense.weight" in saved and "classifier.weight" in saved
    assert set(saved) == set(state)
    for k in state:
        torch.testing.assert_close(saved[k], state[k], rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ViTForImageClassification.from_pretrained(tmp_path / "m").eval()
    x = torch.from_numpy(task_data("c347+rot90", "test")[0][:50].copy())  # (50, 8, 8) in [0, 1]
    with torch.no_grad():
        ref = model(pixel_values=(2 * x - 1).unsqueeze(1)).logits  # the ViT processor's normalisation
    ours = vit_logits({k: v.unsqueeze(0) for k, v in state.items()}, x.unsqueeze(0), TINY)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_init_state_is_seeded_and_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    a, b, c = init_state(TINY, 10, 5), init_state(TINY, 10, 5), init_state(TINY, 10, 6)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[QUERY0], c[QUERY0])
    assert a[QUERY0].std() == pytest.approx(0.02, rel=0.3)  # transformers' initializer_range


def test_train_models_is_deterministic_and_learns():
    cfg = TINY
    tasks = ["0v6", "3v8"]
    args = (tasks, [5e-3, 5e-3], [6, 5], [0.05, 0.0], [1, 2], cfg)
    init = [init_state(cfg, 2, s) for s in (7, 8)]
    out1, loss1 = train_models([dict(s) for s in init], *args)
    out2, loss2 = train_models([dict(s) for s in init], *args)
    assert loss1 == loss2 and all(torch.equal(a[k], b[k]) for a, b in zip(out1, out2) for k in a)
    before = evaluate_states(init, tasks, cfg, "train")
    after = evaluate_states(out1, tasks, cfg, "train")
    assert (after > before).all() and (after > 0.8).all(), (before, after)
    assert init[0][QUERY0].data_ptr() != out1[0][QUERY0].data_ptr()


def test_stacked_accuracy_pads_masks_and_chunks_like_one_model_at_a_time():
    from uws_core.zoo.vit_model import stacked_accuracy

    gen = torch.Generator().manual_seed(3)
    states = [init_state(TINY, 2, seed=1), init_state(TINY, 5, seed=2)]        # heads of 2 and 5 classes
    head = torch.zeros(2, 5, TINY.hidden_size)
    bias = torch.zeros(2, 5)
    for g, s in enumerate(states):
        n = s["classifier.weight"].shape[0]
        head[g, :n] = s["classifier.weight"] + torch.randn(n, TINY.hidden_size, generator=gen)
        bias[g, :n] = s["classifier.bias"]
    params = {k: torch.stack([s[k] for s in states]) for k in states[0] if not k.startswith("classifier.")}
    params.update({"classifier.weight": head, "classifier.bias": bias})       # (2, ...), heads padded to 5 rows
    images = [torch.rand(7, 8, 8, generator=gen).numpy(), torch.rand(11, 8, 8, generator=gen).numpy()]
    labels = [torch.randint(0, 2, (7,), generator=gen).numpy(), torch.randint(0, 5, (11,), generator=gen).numpy()]
    acc = stacked_accuracy(params, images, labels, [2, 5], TINY)
    want = []
    for g, n in enumerate([2, 5]):                                            # one model, its own rows, no padding
        one = {k: v[g:g + 1, :n] if k.startswith("classifier.") else v[g:g + 1] for k, v in params.items()}
        pred = vit_logits(one, torch.from_numpy(images[g]).unsqueeze(0), TINY)[0].argmax(-1).numpy()
        want.append((pred == labels[g]).mean())
    assert acc.dtype == "float64" and acc.tolist() == pytest.approx(want, abs=1e-12)
    for chunk in (1, 3, 100):
        assert stacked_accuracy(params, images, labels, [2, 5], TINY, chunk=chunk).tolist() == acc.tolist()
