"""The ledger's verdicts follow the numbers in the result files, and a missing notebook is "not run"."""
import json

import pytest

from uws_core.report import claims


def _write(d, stem, results, scale="laptop"):
    (d / f"{stem}.json").write_text(json.dumps({"notebook": stem, "scale": scale, "results": results}))


def _lora(excess=0.2, every=True):
    views = ("A (rows, authors)", "B (cols, authors)", "B@A (model axis, replication)", "B@A (rows)")
    return {"n_adapters": 10, "rank": 4,
            "verdict_k16": {v: {"beats per-adapter null in every module": every,
                                "beats pooled null in every module": True,
                                "median excess over per-adapter null": excess} for v in views},
            "median_top_evr": {"trained": {v: {"16": 0.5 + excess} for v in views},
                               "null_per_model": {v: {"16": 0.5} for v in views}}}


def _random_init(gap):
    return {"random_init": {"table": {"random_init": {"rows": 0.27 + gap}, "mp": {"rows": 0.27}}},
            "params": {"N_RANDOM_INIT": 64}, "lora_shared_init": None}


def _vit(proj=0.95, full=0.96, mean=0.7, rnd=0.8, null_gap=0.4):
    acc = []
    for g in ("fit", "unseen"):
        acc += [{"group": g, "how": "rows", "k": 16, "acc": proj}, {"group": g, "how": "own", "k": 0, "acc": full},
                {"group": g, "how": "mean", "k": 0, "acc": mean}, {"group": g, "how": "random", "k": 16, "acc": rnd}]
    evr = [{"view": v, "type": t, "top16": 0.3 + null_gap, "null16": 0.3} for v in ("rows", "model") for t in ("q", "fc1")]
    return {"projection_mean_acc": acc, "evr_median": evr}


def _verdicts(d):
    R = claims.load_all(d)
    return {c.source + ":" + c.claim.split()[0]: c.verdict for c in claims.ledger(R)}, claims.ledger(R)


def test_missing_results_are_not_run(tmp_path):
    rows = claims.ledger(claims.load_all(tmp_path))
    assert len(rows) == len(claims.CLAIMS) and {c.verdict for c in rows} == {claims.NOT_RUN}


@pytest.mark.parametrize("excess,every,expected", [(0.2, True, "holds"), (0.01, True, "fails"), (0.2, False, "fails")])
def test_lora_spectra_verdict_follows_excess_over_null(tmp_path, excess, every, expected):
    _write(tmp_path, "01_mistral7b_lora_spectra", _lora(excess, every))
    assert claims.lora_spectra(claims.load_all(tmp_path)).verdict == expected


@pytest.mark.parametrize("gap,expected", [(0.0004, "fails"), (0.05, "holds")])
def test_random_init_verdict(tmp_path, gap, expected):
    _write(tmp_path, "07_null_models", _random_init(gap))
    c = claims.random_init(claims.load_all(tmp_path))
    assert c.verdict == expected and "N=64" in c.ours


@pytest.mark.parametrize("kw,expected", [({}, "holds"), ({"proj": 0.85}, "fails"), ({"rnd": 0.93}, "fails"),
                                          ({"mean": 0.92}, "fails")])
def test_projection_verdict(tmp_path, kw, expected):
    _write(tmp_path, "02_vit_spectra_and_projection", _vit(**kw))
    assert claims.vit_projection(claims.load_all(tmp_path)).verdict == expected


def test_projection_without_task_data_is_not_tested(tmp_path):
    r = _vit()
    r["projection_mean_acc"] = []
    _write(tmp_path, "02_vit_spectra_and_projection", r, scale="paper")
    assert claims.vit_projection(claims.load_all(tmp_path)).verdict == claims.NOT_TESTED


def _compression(best_ratio, acc_kept=0.97, with_quality=True):
    rows = [{"setting": "k=4", "ratio": best_ratio, "savings": 1 - 1 / best_ratio, "acc/own": acc_kept},
            {"setting": "k=1", "ratio": 2 * best_ratio, "savings": 1 - 0.5 / best_ratio, "acc/own": 0.5},
            {"setting": "90% EV", "ratio": 2.0, "savings": 0.5, "acc/own": 0.99}]
    if not with_quality:
        rows = [{k: v for k, v in r.items() if k != "acc/own"} for r in rows]
    shapes = [{"k": 16, "LoRA factors": 136.0, "ViT-B rows": 56.6, "Llama-3-8B rows": 43.1}]
    return {"tables": {"vit": rows}, "paper_shapes": shapes}


@pytest.mark.parametrize("ratio,acc,expected", [(14.5, 0.97, "fails"), (120.0, 0.97, "holds"), (120.0, 0.9, "fails")])
def test_compression_verdict_needs_ratio_at_kept_quality(tmp_path, ratio, acc, expected):
    _write(tmp_path, "06_compression", _compression(ratio, acc))
    R = claims.load_all(tmp_path)
    c = claims.vit_compression(R)
    assert c.verdict == expected and "56.6x" in c.ours
    assert claims.llama_compression(R).verdict == claims.NOT_TESTED      # population absent from the tables


def test_compression_without_quality_is_not_tested(tmp_path):
    _write(tmp_path, "06_compression", _compression(120.0, with_quality=False), scale="paper")
    assert claims.vit_compression(claims.load_all(tmp_path)).verdict == claims.NOT_TESTED


def test_markdown_ledger_written(tmp_path):
    _write(tmp_path, "01_mistral7b_lora_spectra", _lora())
    _write(tmp_path, "07_null_models", _random_init(0.0))
    path = claims.write_ledger(tmp_path)
    text = path.read_text()
    assert path.name == "CLAIMS.md" and "(laptop scale)" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + len(claims.CLAIMS)           # header + one row per claim
    assert all(line.count("|") == 8 for line in table)    # 7 columns, no stray pipes from the contents


def test_corrupt_results_file_names_it(tmp_path):
    (tmp_path / "02_vit_spectra_and_projection.json").write_text("{oops")
    with pytest.raises(ValueError, match="02_vit_spectra_and_projection.json"):
        claims.load_all(tmp_path)


@pytest.mark.parametrize("rows_gap,model_gap,expected", [(0.4, 0.3, "holds"), (0.4, 0.02, "mixed"), (0.01, 0.02, "fails")])
def test_full_model_spectra_verdict_per_view(tmp_path, rows_gap, model_gap, expected):
    evr = [{"view": "rows", "type": t, "top16": 0.3 + rows_gap, "null16": 0.3} for t in ("q", "down")]
    evr += [{"view": "model", "type": t, "top16": 0.7 + model_gap, "null16": 0.7} for t in ("q", "down")]
    evr += [{"view": "rows, uncentred", "type": "q", "top16": 0.1, "null16": 0.3}]        # other views are ignored
    _write(tmp_path, "03_llama8b_spectra", {"evr_median": evr})
    assert claims.llama_spectra(claims.load_all(tmp_path)).verdict == expected


def _merge(subspace, best_other, mean, individual=90.0):
    t = {"subspace k=16": subspace, "mean": mean, "task arithmetic": best_other, "TIES": best_other - 5,
         "DARE": best_other - 1, "KnOTS-TIES": best_other - 3, "individual": individual}
    return {"summary_n8": {"ViT": t, "LoRA": t}, "max_subspace_minus_mean": 1e-16}


@pytest.mark.parametrize("subspace,other,mean,expected", [(75.7, 75.8, 75.7, "fails"), (83.5, 68.0, 69.4, "holds"),
                                                          (83.5, 68.0, 83.5, "fails")])   # the mean is a rival too
def test_merging_verdict(tmp_path, subspace, other, mean, expected):
    _write(tmp_path, "04_merging", _merge(subspace, other, mean))
    c = claims.merging(claims.load_all(tmp_path))
    assert c.verdict == expected and "|" not in c.ours


@pytest.mark.parametrize("top,rnd,lora,expected", [(0.885, 0.882, 0.876, "fails"), (0.90, 0.85, 0.91, "holds"),
                                                    (0.90, 0.85, 0.95, "fails")])
def test_adaptation_verdict(tmp_path, top, rnd, lora, expected):
    summ = [{"label": "top-k basis", "k": 16, "test": top}, {"label": "top-k basis + mean", "k": 16, "test": top - 0.01},
            {"label": "random k-dim basis", "k": 16, "test": rnd}, {"label": "LoRA rank k", "k": 16, "test": lora}]
    _write(tmp_path, "05_subspace_adaptation", {"vit_summary": summ, "lm_table": []})
    assert claims.adaptation(claims.load_all(tmp_path)).verdict == expected


@pytest.mark.parametrize("kept,expected", [((0.05, 0.34), "fails"), ((0.05, 0.6), "holds")])
def test_lora_loo_verdict(tmp_path, kept, expected):
    acc = {"B@A (replication), mean + proj": {"16": 35.0}, "factors (authors), mean + proj": {"16": 46.1}}
    _write(tmp_path, "08_lora_functional_loo", {
        "n_tasks": 72, "baselines_pct": {"base": 33.1, "own": 70.6, "mean_of_others": 31.2}, "accuracy_mean_pct": acc,
        "paired_differences_pct": [{"comparison": "B@A: mean + proj - mean only", "k": 16, "diff": 3.8, "lo": 2.1, "hi": 5.4}],
        "verdict": {"share of own gain kept, B@A mean+proj k=16": kept[0], "share of own gain kept, factors k=16": kept[1]}})
    assert claims.lora_loo(claims.load_all(tmp_path)).verdict == expected


@pytest.mark.parametrize("seed_excess,expected", [((0.2, 0.3, 0.15), "holds"), ((0.01, 0.02, 0.0), "fails"),
                                                   ((0.2, 0.01, 0.2), "seed-dependent")])
def test_verdict_must_hold_for_every_seed(tmp_path, seed_excess, expected):
    res = _lora(seed_excess[0])
    res["seeds"] = {str(s): {k: _lora(e)[k] for k in ("verdict_k16", "median_top_evr")}
                    for s, e in enumerate(seed_excess)}
    _write(tmp_path, "01_mistral7b_lora_spectra", res)
    c = claims.claim_over_seeds(claims.lora_spectra, claims.load_all(tmp_path))
    assert c.verdict == expected
    assert c.ours.count("seed") == 1 and "0 " in c.ours.split("per seed:")[1]
    row = next(r for r in claims.ledger(claims.load_all(tmp_path)) if r.source.startswith("01"))
    assert row.verdict == expected


def test_claims_without_seeds_are_unchanged(tmp_path):
    _write(tmp_path, "01_mistral7b_lora_spectra", _lora(0.01))
    c = claims.claim_over_seeds(claims.lora_spectra, claims.load_all(tmp_path))
    assert c.verdict == "fails" and "per seed" not in c.ours


def test_seeds_that_are_not_a_mapping_are_refused_by_key(tmp_path):
    res = _lora(0.2)
    res["seeds"] = [0, 1, 2]
    _write(tmp_path, "01_mistral7b_lora_spectra", res)
    with pytest.raises(ValueError, match="01_mistral7b_lora_spectra: key 'seeds'"):
        claims.ledger(claims.load_all(tmp_path))


def test_seeds_that_did_not_recompute_a_claim_are_not_judged_for_it(tmp_path):
    """07's seeds carry the LoRA shared-init study only: the random-init claim (ViT seed 0) gets no per-seed line."""
    res = _random_init(0.0004)
    res["lora_shared_init"] = {"median": {"shared": 0.8, "rest_mean": 0.5, "rest_std": 0.01}, "n": 28}
    res["seeds"] = {str(s): {"lora_shared_init": res["lora_shared_init"]} for s in range(3)}
    _write(tmp_path, "07_null_models", res)
    R = claims.load_all(tmp_path)
    rand = claims.claim_over_seeds(claims.random_init, R)
    assert rand.verdict == "fails" and "per seed" not in rand.ours
    shared = claims.claim_over_seeds(claims.lora_shared_init, R)
    assert shared.verdict == "holds" and "per seed: 0 holds, 1 holds, 2 holds" in shared.ours
    assert "|" not in shared.ours  # CLAIMS.md is a markdown table: no cell may hold a column separator


def test_claim_text_rows_are_complete_and_all_used():
    """claims.toml holds the fixed text of every ledger row: five fields each, every row used by a claim, every
    {field} filled (the rendered ledger of no results has no brace left)."""
    from uws_core.report import claims

    fields = {"claim", "paper", "replication", "criterion", "source"}
    assert all(set(row) == fields for row in claims.CLAIM_TEXT.values())
    rows = claims.ledger({})
    assert len(rows) == len(claims.CLAIMS)
    text = claims.render_markdown(rows, {})
    assert "{" not in text and "}" not in text
    used = {name for name in claims.CLAIM_TEXT if name in {"full_model_spectra", "compression"}
            or any(f.__name__ == name for f in claims.CLAIMS)}
    assert used == set(claims.CLAIM_TEXT)


def test_about_names_the_missing_row():
    from uws_core.report import claims

    with pytest.raises(KeyError, match="no row 'nope'"):
        claims.about("nope")
    assert claims.about("random_init", top16=0.5, mp16=0.25)["replication"] == \
        "top-16 EVR 0.5000 vs Marchenko-Pastur 0.2500"
