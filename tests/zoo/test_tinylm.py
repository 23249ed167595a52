"""The batched multi-LoRA wrapper against the real peft library, and greedy accuracy against decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uws_core.zoo.tasks import CharTokenizer, Example, make_tasks
from uws_core.zoo.tinylm import (MultiLora, accuracy, encode_examples, greedy_decode, merge_lora_state,
                             mistral_config, new_base_model, train_adapters)

TOK = CharTokenizer()
CFG = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=1, intermediate_size=64)


def _random_lora(model, n=3, r=4, alpha=8.0, seed=0):
    """MultiLora with random nonzero A and B (B is zero at init, which would make every check trivial)."""
    lora = MultiLora(model, n, r, alpha)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return lora


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # tiny matrices: one thread is as fast, and immune to a busy machine
    from uws_core.linalg.numerics import compute_settings

    with compute_settings(1, deterministic=None, quiet=False, onednn=None):  # threads only, restored after
        yield


@pytest.fixture
def base_and_ids():
    model = new_base_model(mistral_config(TOK.vocab_size, **CFG), seed=0).eval()
    ids = torch.randint(3, TOK.vocab_size, (5, 12), generator=torch.Generator().manual_seed(1))
    return model, ids


def test_gqa_config():
    cfg = mistral_config(TOK.vocab_size, 64, 3, 4, 1, 128)
    assert cfg.num_attention_heads // cfg.num_key_value_heads == 4  # as 32 : 8 in Mistral-7B
    model = new_base_model(cfg, seed=0)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (16, 64)  # (kv_heads * head_dim, hidden)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # a transformers deprecation that peft triggers
def test_batched_lora_equals_peft_model_per_adapter(tmp_path, base_and_ids):
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict

    model, ids = base_and_ids
    model.save_pretrained(tmp_path / "base")
    lora = _random_lora(model)
    fresh = lambda: type(model).from_pretrained(tmp_path / "base").eval()  # noqa: E731
    writer = get_peft_model(fresh(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"],
                                                lora_dropout=0.0))
    index = torch.tensor([2, 0, 1, 1, 2])  # a mixed batch: every example its own adapter
    with torch.no_grad(), lora.adapters(index):
        mixed = model(input_ids=ids).logits
    for j in range(3):
        state = lora.peft_state_dict(j)
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in state
        assert not set_peft_model_state_dict(writer, state).unexpected_keys
        writer.save_pretrained(tmp_path / f"a{j}", save_embedding_layers=False)
        peft_model = PeftModel.from_pretrained(fresh(), tmp_path / f"a{j}").eval()
        with torch.no_grad():
            ref = peft_model(input_ids=ids).logits
            with lora.adapters(torch.full((5,), j)):
                ours = model(input_ids=ids).logits
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(mixed[index == j], ref[index == j], atol=1e-5, rtol=0)
        merged = fresh()
        merge_lora_state(merged, state, scaling=2.0)
        with torch.no_grad():
            torch.testing.assert_close(merged(input_ids=ids).logits, ref, atol=1e-5, rtol=0)
    with torch.no_grad():  # no index: the bare base
        torch.testing.assert_close(model(input_ids=ids).logits, fresh()(input_ids=ids).logits, atol=0, rtol=0)


def test_merge_rejects_bad_keys_and_shapes(base_and_ids):
    model, _ = base_and_ids
    with pytest.raises(KeyError, match="q_proj.weight"):
        merge_lora_state(model, {"base_model.model.model.layers.0.self_attn.q_proj.weight": torch.zeros(1)}, 1.0)
    key = "base_model.model.model.layers.0.self_attn.k_proj.lora_"
    with pytest.raises(ValueError, match="k_proj"):
        merge_lora_state(model, {key + "A.weight": torch.zeros(2, 32), key + "B.weight": torch.zeros(32, 2)}, 1.0)
    with pytest.raises(KeyError, match="no matching lora_B"):
        merge_lora_state(model, {key + "A.weight": torch.zeros(2, 32)}, 1.0)
    with pytest.raises(KeyError, match="model.layers.9.self_attn.k_proj"):       # not a module of the base
        other = "base_model.model.model.layers.9.self_attn.k_proj.lora_"
        merge_lora_state(model, {other + "A.weight": torch.zeros(2, 32), other + "B.weight": torch.zeros(32, 2)}, 1.0)


def test_encode_masks_answer_and_eos():
    ids, mask = encode_examples(TOK, [Example("ab>", "xy"), Example("a>", "z")])
    assert ids.shape == (2, 7) and ids[1, -2:].tolist() == [0, 0]  # right padding
    assert TOK.decode(ids[0][mask[0]].tolist()) == "xy" and ids[0][mask[0]].tolist()[-1] == TOK.eos_id
    assert mask.sum(1).tolist() == [3, 2]


def test_teacher_forced_accuracy_equals_greedy_decoding(base_and_ids):
    model, _ = base_and_ids
    lora = _random_lora(model)
    prompts = [e.prompt for t in make_tasks(6, n_train=4, n_val=2, n_test=4) for e in t.test]
    index = torch.arange(len(prompts)) % 3
    decoded = greedy_decode(model, TOK, prompts, max_new_tokens=40, lora=lora, index=index)
    ok = [bool(d) and len(d) < 40 and "\ufffd" not in d for d in decoded]  # ended with <eos>, plain text
    assert sum(ok) >= 3
    right = [Example(p, d) for p, d, k in zip(prompts, decoded, ok) if k]
    idx = index[torch.tensor(ok)]
    assert accuracy(model, TOK, right, lora=lora, index=idx).all()
    wrong = [Example(e.prompt, e.answer + "a") for e in right] + [Example(e.prompt, e.answer[:-1]) for e in right]
    assert not accuracy(model, TOK, wrong, lora=lora, index=torch.cat([idx, idx])).any()
    assert not accuracy(model, TOK, [Example(e.prompt, "") for e in right], lora=lora, index=idx).any()


def test_adapters_train_independently_and_deterministically():
    tasks = make_tasks(3, n_train=16, n_val=2, n_test=2)

    def run(which):
        torch.use_deterministic_algorithms(True)
        model = new_base_model(mistral_config(TOK.vocab_size, **CFG), seed=0).eval()
        lora = MultiLora(model, len(which), 4, 8.0)
        for slot, j in enumerate(which):
            lora.init_A(slot, seed=100 + j)
        losses = train_adapters(lora, [tasks[j].train for j in which], TOK, steps=6, batch_per_adapter=4,
                                lr=1e-2, seeds=[7 + j for j in which], n_chunks=2)
        return lora, losses

    joint, losses = run([0, 1, 2])
    again, losses2 = run([0, 1, 2])
    alone, losses_alone = run([1])
    assert np.array_equal(losses, losses2)
    for key, t in joint.peft_state_dict(1).items():
        assert torch.equal(t, again.peft_state_dict(1)[key])
        torch.testing.assert_close(t, alone.peft_state_dict(0)[key], atol=1e-4, rtol=0)
        assert t.abs().sum() > 0
    np.testing.assert_allclose(losses[:, 1], losses_alone[:, 0], atol=1e-4)
    assert losses.shape == (6, 3) and np.isfinite(losses).all()
