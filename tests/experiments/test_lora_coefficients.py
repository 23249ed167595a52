"""Coefficients on a frozen model-axis basis of LoRA adapters (notebook 05 at paper scale): the factored update
``sum_i w_i s_i B_i A_i`` with ``w = C alpha (+ 1/N)`` equals the explicitly formed basis combination, both bases are
orthonormal, the forward hooks add exactly that update and pass gradients to alpha only, and training on a tiny
Mistral-architecture base changes nothing but alpha (with or without gradient checkpointing)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import task_fixtures as fx
from uws_core.experiments import lora_coefficients as lc
from uws_core.experiments.lora_projection import LoraStack
from uws_core.experiments.task_data import TaskExample

MODULES = ("base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.0.self_attn.v_proj")
SHAPES = {MODULES[0]: (6, 5), MODULES[1]: (4, 5)}  # (d_out, d_in)
N, R, K = 7, 2, 3


def _stack(seed=0):
    g = torch.Generator().manual_seed(seed)
    states = [{k: v for m, (o, i) in SHAPES.items() for k, v in ((m + ".lora_B.weight", torch.randn(o, R, generator=g,
              dtype=torch.float64)), (m + ".lora_A.weight", torch.randn(R, i, generator=g, dtype=torch.float64)))}
              for _ in range(N)]
    scal = np.linspace(0.5, 2.0, N)
    return LoraStack.from_states(states, scaling=scal), states, scal


def _products(states, scal, m):
    return torch.stack([s * st[m + ".lora_B.weight"] @ st[m + ".lora_A.weight"] for st, s in zip(states, scal)])


@pytest.mark.parametrize("which", ["subspace", "random"])
def test_factored_update_equals_the_formed_basis_combination(which):
    stack, states, scal = _stack()
    basis = lc.CoefficientBasis(stack, K, seed=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    for add_mean in (False, True):
        alpha = {m: torch.randn(K, generator=g, dtype=torch.float64) for m in MODULES}
        coef = basis.coefficients(which)
        w = {m: lc.combination_weights(coef[m], alpha[m], add_mean) for m in MODULES}
        for m, (b, a) in lc.coefficient_pairs(basis, w).items():
            P = _products(states, scal, m)                                     # (N, d_out, d_in), formed here only
            vecs = torch.einsum("ij,ide->jde", coef[m], P)                     # basis_j = sum_i C_ij P_i
            gram = torch.einsum("jde,lde->jl", vecs, vecs)
            torch.testing.assert_close(gram, torch.eye(K, dtype=torch.float64), rtol=0, atol=1e-10)  # orthonormal
            expected = torch.einsum("j,jde->de", alpha[m], vecs) + (P.mean(0) if add_mean else 0)
            torch.testing.assert_close(b @ a, expected, rtol=0, atol=1e-10)
    assert basis.trainable_count(which) == K * len(MODULES)


def test_fitted_basis_is_the_top_k_centred_model_axis_pca_and_random_is_seeded():
    stack, states, scal = _stack()
    basis = lc.CoefficientBasis(stack, K, seed=3, dtype=torch.float64)
    m = MODULES[0]
    P = _products(states, scal, m).reshape(N, -1)
    _, _, vt = torch.linalg.svd(P - P.mean(0), full_matrices=False)
    ours = basis.coef[m].T @ P                                             # (K, d_out d_in)
    torch.testing.assert_close(ours.T @ ours, vt[:K].T @ vt[:K], rtol=0, atol=1e-10)   # the same projector
    assert torch.allclose(basis.random[m].sum(0), torch.zeros(K, dtype=torch.float64), atol=1e-10)  # centred
    again = lc.CoefficientBasis(stack, K, seed=3, dtype=torch.float64)
    assert torch.equal(again.random[m], basis.random[m])
    other = lc.CoefficientBasis(stack, K, seed=4, dtype=torch.float64)
    assert not torch.allclose(other.random[m], basis.random[m])


class _Tiny(torch.nn.Module):
    """Modules named as a Mistral's (``model.layers.0.self_attn.q_proj``) for the hooks to find."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = torch.nn.Module()
        attn = torch.nn.Module()
        attn.q_proj = torch.nn.Linear(5, 6, dtype=torch.float64)
        attn.v_proj = torch.nn.Linear(5, 4, dtype=torch.float64)
        layer = torch.nn.Module()
        layer.self_attn = attn
        self.model.layers = torch.nn.ModuleList([layer])

    def forward(self, x):
        a = self.model.layers[0].self_attn
        return a.q_proj(x).sum(-1) * a.v_proj(x).sum(-1)


def test_hooks_add_the_update_and_pass_gradients_to_alpha_only():
    stack, states, scal = _stack()
    basis = lc.CoefficientBasis(stack, K, dtype=torch.float64)
    model = _Tiny().requires_grad_(False)
    layers = lc.CoefficientLayers(basis, "subspace", True, "cpu", torch.float64)
    with torch.no_grad():
        for a in layers.alpha.values():
            a.copy_(torch.arange(1.0, K + 1))
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    attn = model.model.layers[0].self_attn
    y0 = model(x)
    layers.attach(model)
    pairs = lc.coefficient_pairs(basis, layers.weights())
    q = x @ (attn.q_proj.weight + pairs[MODULES[0]][0] @ pairs[MODULES[0]][1]).T + attn.q_proj.bias
    v = x @ (attn.v_proj.weight + pairs[MODULES[1]][0] @ pairs[MODULES[1]][1]).T + attn.v_proj.bias
    y = model(x)
    torch.testing.assert_close(y, q.sum(-1) * v.sum(-1), rtol=1e-12, atol=1e-12)
    y.sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in layers.alpha.values())
    assert all(p.grad is None for p in model.parameters())
    layers.detach()
    torch.testing.assert_close(model(x), y0, rtol=0, atol=0)                   # hooks removed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("coef")
    base = fx.write_tiny_base(root / "base", ("task1_toy",))
    dirs = [fx.write_tiny_adapter(base, root / f"a{i}", seed=i, r=2, scale=0.3) for i in range(4)]
    tok = AutoTokenizer.from_pretrained(str(base))
    tok.pad_token = tok.convert_ids_to_tokens(0)
    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    examples = [TaskExample(e["id"], e["input"], tuple(e["output"])) for e in fx.task_examples("task1_toy", 4, "train")]
    return base, dirs, tok, model, examples


def test_answer_tokens_start_after_the_prompt(tiny):
    _, _, tok, _, examples = tiny
    for (ids, n), e in zip(lc.answer_token_ids(tok, examples, 512), examples):
        assert tok.decode(ids[n:], skip_special_tokens=True).strip() == e.references[0] and ids[-1] == tok.eos_token_id
    ids, n = lc.answer_token_ids(tok, examples[:1], 6)[0]
    assert len(ids) == 6 and 0 <= n < 6                                      # the prompt is cut from the left


def test_training_changes_alpha_only_and_checkpointing_gives_the_same_run(tiny, tmp_path):
    from uws_core.weights.adapters import AdapterSet, read_adapter_config

    base, dirs, tok, model, examples = tiny
    basis = lc.CoefficientBasis(LoraStack.from_adapter_set(AdapterSet.from_dirs(dirs)), 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = tok(["Definition: answer"], return_tensors="pt")["input_ids"]
    logits0 = model(ids).logits
    runs, calls = {}, []
    counter = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *_: calls.append(1))
    for ckpt in (False, True):
        s = lc.CoefficientSettings(k=2, steps=3, batch_size=2, lr=0.5, checkpointing=ckpt)
        layers = lc.CoefficientLayers(basis, "subspace", True, "cpu", torch.float32)
        n0 = len(calls)
        runs[ckpt] = (lc.train_coefficients(model, tok, layers, examples, s, seed=0), layers)
        assert len(calls) - n0 == 3 * (2 if ckpt else 1)          # checkpointing recomputes each layer's forward
    counter.remove()
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-5)
    assert all(a.abs().sum() > 0 for a in runs[False][1].alpha.values())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # the base is untouched
    torch.testing.assert_close(model(ids).logits, logits0, rtol=0, atol=0)          # and unhooked
    assert not model.training
    d = lc.write_combination(basis, runs[False][1].weights(), tmp_path / "v", read_adapter_config(dirs[0]).raw,
                             {"settings": {"run": "x"}, "losses": runs[False][0].tolist()})
    assert json.loads((d / lc.META).read_text())["settings"] == {"run": "x"}
    assert lc._done(d, {"settings": {"run": "x"}}) is not None and lc._done(d, {"settings": {"run": "y"}}) is None


def test_study_refuses_unknown_variants_a_used_evaluator_and_4_bit_weights(tmp_path):
    from types import SimpleNamespace

    ev = SimpleNamespace(adapter=None, _peft=None, precision="float32", base="tiny")
    with pytest.raises(ValueError, match=r"variants must be among .*'subspace_mean'.*got \['subspace'\]"):
        lc.coefficient_study(ev, None, [], [], {}, tmp_path, variants=("subspace",))
    with pytest.raises(ValueError, match="evaluator of tiny: coefficients are trained on the plain base"):
        lc.coefficient_study(SimpleNamespace(**(ev.__dict__ | {"adapter": "a"})), None, [], [], {}, tmp_path)
    with pytest.raises(ValueError, match="cannot be added to 4-bit weights: use quantize='none'"):
        lc.coefficient_study(SimpleNamespace(**(ev.__dict__ | {"precision": "4-bit nf4"})), None, [], [], {}, tmp_path)


def test_bfloat16_base_with_checkpointing_trains_float32_coefficients(tiny):
    """The GPU path's dtypes on a CPU: a bfloat16 base, bfloat16 factors, float32 alpha, gradient checkpointing."""
    import copy

    from uws_core.weights.adapters import AdapterSet

    _, dirs, tok, model, examples = tiny
    bf = copy.deepcopy(model).to(torch.bfloat16)
    basis = lc.CoefficientBasis(LoraStack.from_adapter_set(AdapterSet.from_dirs(dirs)), 2)
    layers = lc.CoefficientLayers(basis, "random", False, "cpu", bf.dtype)
    s = lc.CoefficientSettings(k=2, steps=2, batch_size=2, lr=0.5, checkpointing=True)
    losses = lc.train_coefficients(bf, tok, layers, examples, s, seed=1)
    assert np.isfinite(losses).all() and all(a.dtype == torch.float32 and a.abs().sum() > 0
                                             for a in layers.alpha.values())
    assert all(b.dtype == torch.bfloat16 for b, _ in layers.factors.values())
