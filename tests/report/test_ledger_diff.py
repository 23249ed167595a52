"""Two results directories' ledgers compared claim by claim: same verdicts pass, a moved verdict or an empty run fails."""
import json

from uws_core.report import claims, ledger_diff


def _write_lora(d, excess):
    """A 01 result file whose LoRA-spectra verdict is "holds" at excess 0.2 and "fails" at 0.01 (tests/report/test_claims.py)."""
    views = ("A (rows, authors)", "B (cols, authors)", "B@A (model axis, replication)", "B@A (rows)")
    results = {"n_adapters": 10, "rank": 4,
               "verdict_k16": {v: {"beats per-adapter null in every module": True, "beats pooled null in every module": True,
                                   "median excess over per-adapter null": excess} for v in views},
               "median_top_evr": {"trained": {v: {"16": 0.5 + excess} for v in views},
                                  "null_per_model": {v: {"16": 0.5} for v in views}}}
    d.mkdir(parents=True, exist_ok=True)
    (d / "01_mistral7b_lora_spectra.json").write_text(json.dumps({"notebook": "01_mistral7b_lora_spectra",
                                                                  "scale": "laptop", "results": results}))


def test_same_verdicts_on_other_numbers_pass(tmp_path, capsys):
    _write_lora(tmp_path / "a", 0.20)
    _write_lora(tmp_path / "b", 0.30)
    pairs = ledger_diff.compare_ledgers(tmp_path / "a", tmp_path / "b")
    assert len(pairs) == len(claims.CLAIMS) and all(p.same for p in pairs)
    lora = next(p for p in pairs if p.verdict_a == "holds")
    assert lora.ours_a != lora.ours_b                     # the numbers moved, the verdict did not
    assert ledger_diff.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "t.md")]) == 0
    assert f"{len(pairs)} of {len(pairs)} verdicts the same" in (tmp_path / "t.md").read_text()


def test_a_moved_verdict_fails_and_is_named(tmp_path, capsys):
    _write_lora(tmp_path / "a", 0.20)
    _write_lora(tmp_path / "b", 0.01)
    assert ledger_diff.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "DIFFERS" in line)
    assert "| holds | fails | DIFFERS |" in row and "LoRA" in row
    assert "1 differ" in out


def test_a_directory_without_results_is_refused_by_name(tmp_path, capsys):
    _write_lora(tmp_path / "a", 0.20)
    (tmp_path / "empty").mkdir()
    assert ledger_diff.main([str(tmp_path / "a"), str(tmp_path / "empty")]) == 1
    assert str(tmp_path / "empty") in capsys.readouterr().out


def _write_spreads(d, **findings):
    """A 05 result file with seed summaries (uws_core.report.seeds.spread) at two depths and one look-alike."""
    from uws_core.report.seeds import spread

    d.mkdir(parents=True, exist_ok=True)
    results = {"seed_spread": {k: spread(v) for k, v in findings.items()},
               "deeper": {"lm_seed_spread": {"x": spread([1.0, 2.0])}},
               "not_a_spread": {"mean": 3.0, "sd": 0.1}}
    (d / "05_subspace_adaptation.json").write_text(json.dumps({"notebook": "05_subspace_adaptation",
                                                               "scale": "laptop", "results": results}))


def test_seed_means_apart_by_more_than_the_seed_range_are_marked(tmp_path):
    _write_spreads(tmp_path / "a", inside=[1.0, 1.2, 1.4], outside=[1.0, 1.1, 1.2])
    _write_spreads(tmp_path / "b", inside=[1.1, 1.3, 1.5], outside=[1.5, 1.6, 1.7])
    pairs = {p.quantity: p for p in ledger_diff.compare_seed_spreads(tmp_path / "a", tmp_path / "b")}
    assert set(pairs) == {"05_subspace_adaptation: seed_spread/inside", "05_subspace_adaptation: seed_spread/outside",
                          "05_subspace_adaptation: deeper/lm_seed_spread/x"}     # the look-alike is not a spread
    assert not pairs["05_subspace_adaptation: seed_spread/inside"].beyond_seed_range      # 0.1 apart, range 0.4
    assert pairs["05_subspace_adaptation: seed_spread/outside"].beyond_seed_range          # 0.5 apart, range 0.2
    text = ledger_diff.render_spreads(list(pairs.values()), "a", "b")
    assert "1 of 3 seed means apart by more than their seed range" in text
    assert "| 05_subspace_adaptation: seed_spread/outside | 1.1 (1 to 1.2, n=3) | 1.6 (1.5 to 1.7, n=3) | yes |" in text
