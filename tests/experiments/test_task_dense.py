"""Dense-delta variants on the tiny Mistral-architecture base: a low-rank update evaluated as a PEFT pair and as a
dense delta (float32 and bfloat16) gives the same predictions and scores; the base is bitwise the base again after
a dense variant; the writer's size rule; refusals naming the file and the key."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import sibling_test_module
from task_fixtures import write_task_dataset
from uws_core.experiments.lora_projection import LoraStack
from uws_core.experiments.task_adapters import heldout_variants, write_adapter_state, write_variants
from uws_core.experiments.task_eval import Evaluator, TaskEvalError, build_prompt, evaluate_tasks
from uws_core.weights.adapters import AdapterSet, read_adapter_config
from uws_core.weights.dense_delta import DELTA_FILE, DELTA_META, is_dense_delta, pair_is_larger
from uws_core.weights.manifests import load_manifest

world = sibling_test_module("notebooks", "task_world")
Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    # notebook 08's tiny world: a base fitted to answer (confident logits, no near ties), one IID task's adapter
    # fitted to its task (it changes the answers), five small random training adapters
    w = world.write_task_world(root, n_train=5, n_iid=1, n_ood=0, n_test=3)
    repo = dict(load_manifest("mistral7b_loras")[["task_id", "repo_id"]].values)
    base, tasks = w["base"], w["iid"] + w["train"][:1]
    dirs = [w["loras"] / repo[t] for t in w["iid"] + w["train"]]
    stack = LoraStack.from_adapter_set(AdapterSet.from_dirs(dirs, [f"a{i}" for i in range(6)]))
    data = {t: write_task_dataset(root / "d" / t, t, n_test=3) for t in tasks}
    like = read_adapter_config(dirs[0]).raw
    own = {}
    for mode, dtype, name in (("never", torch.float32, "pair"), ("always", torch.float32, "dense32"),
                              ("always", torch.bfloat16, "dense16")):
        own[name] = write_adapter_state(stack.state(0), root / name, like, float(stack.scalings[0]), mode, dtype)
    return {"root": root, "base": base, "stack": stack, "data": data, "like": like, "own": own,
            "ev": Evaluator(base)}


def base_weights(ev) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in ev.model.state_dict().items()}


def logits(ev, text: str) -> torch.Tensor:
    enc = ev.tokenizer([build_prompt(text)], return_tensors="pt")
    model = ev._peft if ev._peft is not None and ev.adapter is not None else ev.model
    with torch.no_grad():
        return model(**enc).logits[0, -1].double()


def test_size_rule_at_mistral_and_tiny_shapes():
    mistral = {"q": (4096, 4096), "k": (1024, 4096), "v": (1024, 4096)}
    assert pair_is_larger(mistral, 4096) and not pair_is_larger(mistral, 16)  # the mean variants vs the own adapter
    assert pair_is_larger({"q": (4096, 4096)}, 2048) and not pair_is_larger({"q": (4096, 4096)}, 2047)
    # the written files at Mistral-7B's shapes (32 layers of q, k, v): pairs of rank 4096 in float32 vs bfloat16 deltas
    pair_bytes = 32 * sum(4096 * (o + i) for o, i in mistral.values()) * 4
    dense_bytes = 32 * sum(o * i for o, i in mistral.values()) * 2
    assert round(pair_bytes / 1e9, 1) == 9.7 and round(dense_bytes / 1e9, 2) == 1.61


def test_auto_writes_high_rank_variants_dense_and_low_rank_ones_as_pairs(tiny, tmp_path):
    stack = tiny["stack"]
    variants = heldout_variants(stack, 5, ks=(2,), recipes=("product",), random_control=False)
    written = dict(zip(variants, write_variants(variants, tmp_path, "t", tiny["like"])))
    # mean of 5 rank-4 adapters: rank 20 (q, 32 x 32) and 16 (k, v, 16 x 32); padded to 20: 3200 numbers >= 2048
    assert is_dense_delta(written["mean_of_others"]) and is_dense_delta(written["product_mean_k2"])
    assert not is_dense_delta(written["own"]) and (written["own"] / "adapter_config.json").is_file()
    meta = json.loads((written["mean_of_others"] / DELTA_META).read_text())
    assert meta["source"] == "t/mean_of_others" and meta["dtype"] == "bfloat16" and meta["pair_rank"] == 20
    assert meta["scaling_applied"] == pytest.approx(float(stack.scalings[5])) and Q in meta["keys"]
    from safetensors.torch import load_file

    got = load_file(str(written["mean_of_others"] / DELTA_FILE))[Q]
    want = sum(float(stack.scalings[i]) * stack.state(i)[f"base_model.model.{Q[:-7]}.lora_B.weight"].double()
               @ stack.state(i)[f"base_model.model.{Q[:-7]}.lora_A.weight"].double() for i in range(5)) / 5
    assert got.dtype == torch.bfloat16  # one rounding of the float64 mean: relative error <= 2^-8
    torch.testing.assert_close(got.double(), want, rtol=2 ** -8, atol=1e-12)


def test_a_rerun_in_the_other_format_leaves_no_stale_files(tiny, tmp_path):
    """The evaluator picks the format by which files exist: writing a pair over a dense delta (and back) removes the
    other format's files, and no temporary file is left beside them."""
    variants = heldout_variants(tiny["stack"], 5, ks=(2,), recipes=("product",), random_control=False)
    state, scaling = variants["mean_of_others"]
    d = write_adapter_state(state, tmp_path / "v", tiny["like"], scaling, dense="always")
    assert is_dense_delta(d)
    write_adapter_state(state, d, tiny["like"], scaling, dense="never")
    assert not is_dense_delta(d) and not (d / DELTA_FILE).exists() and (d / "adapter_config.json").is_file()
    write_adapter_state(state, d, tiny["like"], scaling, dense="always")
    assert is_dense_delta(d) and not (d / "adapter_config.json").exists()
    assert sorted(p.name for p in d.iterdir()) == sorted([DELTA_FILE, DELTA_META])


def test_pair_and_dense_delta_give_the_same_predictions_and_scores(tiny, tmp_path):
    ev, data, own = tiny["ev"], tiny["data"], tiny["own"]
    runs = {name: evaluate_tasks(ev, data, tmp_path, name, adapter=d, batch_size=2, progress=False)["records"]
            for name, d in own.items()}
    base = evaluate_tasks(ev, data, tmp_path, "base", progress=False)["records"]
    assert list(runs["pair"]["prediction"]) != list(base["prediction"])  # the update changes the answers
    for name in ("dense32", "dense16"):
        assert list(runs[name]["prediction"]) == list(runs["pair"]["prediction"])
        for m in ("rougeL", "rougeL_max", "exact_match"):
            assert list(runs[name][m]) == list(runs["pair"][m])
    text = world.fx.task_examples(next(iter(data)), 3, "test")[1]["input"]
    ev.use_adapter(own["pair"])
    ref = logits(ev, text)
    ev.use_adapter(own["dense32"])
    assert (logits(ev, text) - ref).abs().max() <= 1e-5 * ref.abs().max()   # float32 rounding only (measured 1.2e-7)
    ev.use_adapter(own["dense16"])
    assert (logits(ev, text) - ref).abs().max() <= 2e-3 * ref.abs().max()   # bf16 delta rounding (measured 2.6e-4)


def test_restore_is_bitwise_exact(tiny):
    ev, own = tiny["ev"], tiny["own"]
    ev.use_adapter(None)
    w0 = base_weights(ev)
    ev.use_adapter(own["dense16"])
    assert not torch.equal(ev.model.get_parameter(Q), w0[Q])
    from safetensors.torch import load_file

    want = load_file(str(own["dense32"] / DELTA_FILE))[Q]
    ev.use_adapter(own["dense32"])  # one dense variant after another starts from the exact base (no stacking)
    torch.testing.assert_close(ev.model.get_parameter(Q).detach() - w0[Q], want, rtol=1e-5, atol=1e-6)
    ev.use_adapter(own["pair"])  # peft after dense: the base under peft's layers is exact
    ev.use_adapter(own["dense32"])
    ev.use_adapter(None)
    w1 = base_weights(ev)
    assert set(w1) == set(w0) and all(torch.equal(w1[k], w0[k]) for k in w0)


def _dense_dir(tiny, tmp_path, name: str, tensors: dict, keys: list | None = None):
    d = tmp_path / name
    d.mkdir()
    save_file(tensors, str(d / DELTA_FILE))
    (d / DELTA_META).write_text(json.dumps({"format": "uws-dense-delta", "version": 1, "weights_file": DELTA_FILE,
                                            "keys": sorted(keys if keys is not None else tensors), "dtype": "float32",
                                            "scaling_applied": 1.0, "source": "test", "pair_rank": None}))
    return d


def test_refusals_name_file_and_key_and_leave_the_base_exact(tiny, tmp_path):
    ev = tiny["ev"]
    ev.use_adapter(None)
    w0 = base_weights(ev)
    bad_key = "model.layers.0.self_attn.nope.weight"
    cases = [(_dense_dir(tiny, tmp_path, "key", {bad_key: torch.ones(32, 32)}),
              rf"key '{bad_key}' is not a weight of base model"),
             (_dense_dir(tiny, tmp_path, "shape", {Q: torch.ones(16, 32)}),
              rf"key '{Q}' has shape \(16, 32\), but that weight of base model .* is \(32, 32\)"),
             (_dense_dir(tiny, tmp_path, "list", {Q: torch.ones(32, 32)}, keys=[]),
              rf"keys differ from {DELTA_META}'s list \(key '{Q}'\)")]
    nofile = tmp_path / "nofile"
    nofile.mkdir()
    (nofile / DELTA_META).write_text(json.dumps({"format": "uws-dense-delta", "version": 1}))
    cases.append((nofile, "does not exist"))
    for d, msg in cases:
        ev.use_adapter(tiny["own"]["dense32"])  # a refusal after a dense variant leaves the exact base
        with pytest.raises(TaskEvalError, match=msg) as exc:
            ev.use_adapter(d)
        assert str(d) in str(exc.value) and ev.adapter is None
        w1 = base_weights(ev)
        assert all(torch.equal(w1[k], w0[k]) for k in w0)
    precision, ev.precision = ev.precision, "4-bit nf4 (bitsandbytes), bfloat16 compute"  # as a 4-bit base says
    try:
        with pytest.raises(TaskEvalError, match="cannot be added to the 4-bit weights of base model"):
            ev.use_adapter(tiny["own"]["dense32"])
    finally:
        ev.precision = precision
    with pytest.raises(ValueError, match="dense must be auto, always or never"):
        write_adapter_state(tiny["stack"].state(0), tmp_path / "x", tiny["like"], 1.0, dense="yes")
