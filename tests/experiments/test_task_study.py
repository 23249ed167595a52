"""The paper-scale study helpers: the setup's refusals, ROUGE-L tables and paired differences on hand-made records,
the share of the gain kept, and in-sample rebuilds that give an adapter back once k spans its factors."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from uws_core.experiments import task_study as ts


def _records(scores: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"task": t, "id": str(i), "rougeL": s, "rougeL_max": s, "exact_match": float(s == 1.0)}
            for t, v in scores.items() for i, s in enumerate(v)]
    return pd.DataFrame(rows)


def test_setup_says_what_is_missing(tmp_path):
    why = ts.functional_setup(None, None, tmp_path)
    assert isinstance(why, str) and "UWS_MISTRAL_BASE not set" in why
    assert "UWS_TASK_DATA_DIR" in ts.functional_setup("base", None, None)
    assert "is not a directory" in ts.functional_setup("base", None, tmp_path / "nope")
    s = ts.functional_setup("base", "", tmp_path, limit=5)
    assert s.revision is None and s.limit == 5 and s.describe()["data_root"] == str(tmp_path)
    assert ts.functional_setup("base", None, tmp_path, limit="20").limit == 20        # from UWS_EVAL_LIMIT
    assert ts.functional_setup("base", None, tmp_path, limit="").limit is None
    for bad in ("ten", "0", 0):
        with pytest.raises(ValueError, match="UWS_EVAL_LIMIT"):
            ts.functional_setup("base", None, tmp_path, limit=bad)


def test_tables_paired_differences_and_gain_kept():
    recs = {"base": _records({"a": [0.0, 0.0], "b": [0.5, 0.5]}),
            "own": _records({"a": [1.0, 1.0], "b": [1.0, 0.5]}),
            "x": _records({"a": [0.5, 0.5], "b": [0.5, 0.5]})}
    t = ts.rouge_table(recs, n_boot=300)
    row = t.set_index("run").loc["own"]
    assert row["tasks"] == 2 and row["n"] == 4 and row["rougeL"] == pytest.approx(87.5)   # (100 + 75) / 2
    assert row["rougeL_lo"] <= row["rougeL"] <= row["rougeL_hi"]
    assert ts.gain_kept(t, "x") == pytest.approx((50 - 25) / (87.5 - 25))
    assert ts.gain_kept(t, "x", own="base", base="own") != ts.gain_kept(t, "x")
    d = ts.paired_table(recs, {"own - base": ("own", "base"), "gone": ("own", "missing")}, n_boot=300)
    assert list(d["comparison"]) == ["own - base"] and d["diff"].iloc[0] == pytest.approx(62.5)
    text = ts.format_table(t)
    assert "own  ROUGE-L  87.5" in text and "(2 tasks, 4 examples)" in text
    assert "own - base  +62.5" in ts.format_table(d)
    assert ts.run_name("subspace k=16") == "subspace_k16" and ts.run_name("90% EV") == "90pct_EV"


def test_in_sample_rebuild_gives_the_adapter_back_when_k_spans_the_factors(tmp_path):
    from uws_core.experiments.lora_projection import LoraStack
    from uws_core.weights.adapters import AdapterSet

    gen = torch.Generator().manual_seed(0)
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    states = [{key + ".lora_A.weight": torch.randn(2, 6, generator=gen),
               key + ".lora_B.weight": torch.randn(5, 2, generator=gen)} for _ in range(3)]
    stack = LoraStack.from_states(states, ["t0", "t1", "t2"], scaling=2.0)
    like = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
    runs = ts.write_in_sample_variants(stack, {"t1": 1}, [("k=1", {key: 1}), ("k=5", {key: 5})], tmp_path, like)
    assert set(runs) == {"k1", "k5"} and runs["k5"]["t1"] == tmp_path / "t1" / "k5"
    full = AdapterSet.from_dirs([runs["k5"]["t1"]])
    b, a = full.load(0, full.module_keys[0], scaled=True)
    want = 2.0 * states[1][key + ".lora_B.weight"].double() @ states[1][key + ".lora_A.weight"].double()
    torch.testing.assert_close(b @ a, want, rtol=0, atol=1e-5)          # 5 centred columns: rank <= 5 spans them
    low = AdapterSet.from_dirs([runs["k1"]["t1"]])
    b1, a1 = low.load(0, low.module_keys[0], scaled=True)
    assert float((b1 @ a1 - want).norm()) > 1e-2 * float(want.norm())


def test_available_tasks_needs_the_data_and_the_adapter_only_when_adapters_are_given(tmp_path):
    from uws_core.weights.manifests import load_manifest

    m = load_manifest("lots_of_loras_tasks")
    (t1, r1), (t2, _) = list(zip(m["task_id"], m["repo_id"]))[:2]
    (tmp_path / r1).mkdir(parents=True)                              # t1's dataset is present, t2's is not
    setup = ts.functional_setup("base", None, tmp_path)
    found, missing = ts.available_tasks(setup, [t1, t2])
    assert found == {t1: tmp_path / r1} and missing == [t2]
    found, missing = ts.available_tasks(setup, [t1, t2], {t1: None, t2: tmp_path})
    assert found == {} and missing == [t1, t2]                       # t1: no adapter; t2: no data
