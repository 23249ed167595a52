"""The ledger's functional rows at paper scale read the ROUGE-L results of notebooks 04, 06 and 08, and say "not
measured at paper scale" when a paper-scale run has none."""
import json

import pytest

from uws_core.report import claims, claims_paper


def _write(d, stem, results, scale="paper"):
    (d / f"{stem}.json").write_text(json.dumps({"notebook": stem, "scale": scale, "results": results}))


def _row(run, score, **extra):
    return {"run": run, "tasks": 2, "n": 20, "rougeL": score, "rougeL_lo": score - 5, "rougeL_hi": score + 5,
            "exact_match": 0.0, "exact_match_lo": 0.0, "exact_match_hi": 0.0, **extra}


FUNC = {"precision": "bfloat16", "device": "cuda", "setup": {"decoding": "greedy", "limit": None}}


def _loo(kept_iid, kept_ood, k=16):
    groups = {}
    for group, kept in (("iid", kept_iid), ("ood", kept_ood)):
        runs = ["base", "own", "mean_of_others", f"product_mean_k{k}", f"factors_nomean_k{k}",
                f"factors_random_nomean_k{k}"]
        groups[group] = {"tasks": ["t1", "t2"], "missing": [], "table": [_row(r, 30.0 + i) for i, r in enumerate(runs)],
                         "gain_kept": {f"product_mean_k{k} k={k}": 0.1, f"factors_nomean_k{k} k={k}": kept}}
    return {"n_adapters": 492, "functional_paper": {**FUNC, "ks": [k], "groups": groups}}


@pytest.mark.parametrize("iid,ood,expected", [(0.6, 0.7, "holds"), (0.6, 0.2, "fails"), (None, 0.9, "fails")])
def test_loo_row_reads_rouge_gain_kept_in_every_group(tmp_path, iid, ood, expected):
    _write(tmp_path, "08_lora_functional_loo", _loo(iid, ood))
    c = claims.lora_loo(claims.load_all(tmp_path))
    assert c.verdict == expected
    assert c.ours.startswith("paper scale, bfloat16 on cuda, greedy decoding, full test splits: IID (2 tasks) ROUGE-L")
    assert "own 31.0 [26.0, 36.0]" in c.ours and "OOD (2 tasks)" in c.ours
    if iid is None:
        assert "n/a (own <= base)" in c.ours


def test_rows_without_rouge_at_paper_scale_say_not_measured(tmp_path):
    _write(tmp_path, "08_lora_functional_loo", {"n_adapters": 492, "functional": "functional evaluation not run: "
                                                "UWS_MISTRAL_BASE and UWS_TASK_DATA_DIR not set (...)"})
    _write(tmp_path, "04_merging", {"n_adapters": 8, "functional": "not run"})
    _write(tmp_path, "05_subspace_adaptation", {"vit_summary": []})
    R = claims.load_all(tmp_path)
    for fn in (claims.lora_loo, claims.merging, claims.adaptation):
        c = fn(R)
        assert c.verdict == claims.NOT_TESTED and c.ours.startswith("not measured at paper scale"), fn
    assert "UWS_MISTRAL_BASE and UWS_TASK_DATA_DIR not set" in claims.lora_loo(R).ours
    _write(tmp_path, "08_lora_functional_loo", _loo(0.6, 0.7), scale="laptop")   # laptop: the laptop reading
    assert claims.lora_loo(claims.load_all(tmp_path)).ours == "weight-space errors only"


def _merge(subspace, mean, best):
    table = [dict(_row(m.replace(" ", "_"), s), method=m) for m, s in
             (("base", 20.0), ("individual", 80.0), ("mean", mean), ("subspace k=16", subspace),
              ("task arithmetic", best), ("TIES", best - 3), ("DARE", best - 4), ("KnOTS-TIES", best - 5))]
    paired = [{"comparison": f"subspace k=16 - {m}", "diff": subspace - s, "lo": subspace - s - 1,
               "hi": subspace - s + 1} for m, s in (("mean", mean), ("task arithmetic", best))]
    return {"n_adapters": 8, "functional_paper": {**FUNC, "tasks": ["a"] * 8, "table": table, "paired": paired}}


@pytest.mark.parametrize("subspace,mean,best,expected,other", [
    (60.0, 40.0, 41.0, "holds", "task arithmetic"),
    (60.0, 60.0, 41.0, "fails", "mean"),            # the subspace merge = the mean (the replication's finding)
    (60.0, 40.0, 59.0, "fails", "task arithmetic")])
def test_merging_row_reads_rouge_of_every_merge(tmp_path, subspace, mean, best, expected, other):
    _write(tmp_path, "04_merging", _merge(subspace, mean, best))
    c = claims.merging(claims.load_all(tmp_path))
    assert c.verdict == expected
    d = subspace - (mean if other == "mean" else best)
    assert f"best other {other}" in c.ours and f"subspace - {other} {d:+.1f} [{d - 1:+.1f}, {d + 1:+.1f}]" in c.ours
    assert "individual 80.0 [75.0, 85.0]" in c.ours and "8 tasks" in c.ours


def _compression(kept_k16, with_rouge=True):
    tables = {"lora": [{"setting": s, "ratio": r, "savings": 1 - 1 / r} for s, r in
                       (("k=1", 40.0), ("k=16", 20.0), ("k=64", 5.0), ("90% EV", 1.2))]}
    out = {"tables": tables, "paper_shapes": [{"k": 16, "LoRA factors": 136.0}]}
    if with_rouge:
        rows = [dict(_row(s, 0.0), setting=s, **{"rougeL/own": q}) for s, q in
                (("base", 0.3), ("own", 1.0), ("k=1", 0.5), ("k=16", kept_k16), ("k=64", 0.99), ("90% EV", 1.0))]
        out["functional_paper"] = {**FUNC, "tasks": ["t"] * 10, "table": rows}
    return out


@pytest.mark.parametrize("kept,expected,text", [(0.96, "holds", "20.00x keeping 95% ROUGE-L (k=16)"),
                                                (0.90, "fails", "5.00x keeping 95% ROUGE-L (k=64)")])
def test_lora_compression_row_reads_rouge_kept(tmp_path, kept, expected, text):
    _write(tmp_path, "06_compression", _compression(kept))
    c = claims.lora_compression(claims.load_all(tmp_path))
    assert c.verdict == expected and c.ours.startswith(text)
    _write(tmp_path, "06_compression", _compression(kept, with_rouge=False))
    c = claims.lora_compression(claims.load_all(tmp_path))
    assert c.verdict == claims.NOT_TESTED and c.ours.endswith("; not measured at paper scale")


def test_compression_quality_ignores_rows_without_a_ratio():
    r = _compression(0.96)
    r["functional_paper"]["table"][3]["rougeL/own"] = None                   # own ROUGE-L 0: no ratio
    assert claims_paper.compression_quality_paper(r) == {"k=1": 0.5, "k=64": 0.99, "90% EV": 1.0}
    assert claims_paper.compression_quality_paper({"tables": {}}) is None


def _adaptation(sub_mean, sub_nomean, rnd, own):
    runs = (("base", 20.0), ("own", own), ("mean_only", 25.0), ("subspace_mean_k16", sub_mean),
            ("subspace_nomean_k16", sub_nomean), ("random_mean_k16", rnd), ("random_nomean_k16", rnd - 10))
    return {"trainable_counts": [], "functional_paper": {
        **FUNC, "tasks": ["t1", "t2"], "settings": {"k": 16, "steps": 50, "batch_size": 8},
        "table": [_row(r, s) for r, s in runs], "training": [{"run": "subspace_mean_k16", "trainable": 1536}]}}


@pytest.mark.parametrize("sub_mean,sub_nomean,rnd,own,expected", [
    (50.0, 40.0, 45.0, 51.0, "holds"),      # best (with mean) 5 above random + mean, 1 below own
    (50.0, 40.0, 49.0, 51.0, "fails"),      # not 2 points above the random basis
    (50.0, 40.0, 45.0, 60.0, "fails"),      # far below the own LoRA
    (30.0, 50.0, 45.0, 51.0, "holds")])     # best without the mean: compared with random without the mean (35)
def test_adaptation_row_reads_the_coefficients_trained_on_mistral(tmp_path, sub_mean, sub_nomean, rnd, own, expected):
    _write(tmp_path, "05_subspace_adaptation", _adaptation(sub_mean, sub_nomean, rnd, own))
    c = claims.adaptation(claims.load_all(tmp_path))
    assert c.verdict == expected
    assert c.ours.startswith("paper scale, bfloat16 on cuda, greedy decoding, full test splits, Mistral-7B, 2 OOD "
                             "tasks, 1536 coefficients trained (50 steps of 8), ROUGE-L: subspace")
    assert f"own LoRA {own:.1f} [{own - 5:.1f}, {own + 5:.1f}]" in c.ours and "mean only 25.0" in c.ours
    _write(tmp_path, "05_subspace_adaptation", {"trainable_counts": [], "functional": "functional evaluation not run: "
                                                "UWS_MISTRAL_BASE and UWS_TASK_DATA_DIR not set (...)"})
    c = claims.adaptation(claims.load_all(tmp_path))
    assert c.verdict == claims.NOT_TESTED and "Mistral-7B coefficients: functional evaluation not run" in c.ours
