import math

import pytest

from uws_core.report.seeds import SEED_DEPENDENT, format_spread, seed_table, spread, verdict_over_seeds


def test_spread_of_three_seeds():
    s = spread([0.5, 0.6, 0.7])
    assert s["n"] == 3 and s["min"] == 0.5 and s["max"] == 0.7
    assert abs(s["mean"] - 0.6) < 1e-12 and abs(s["sd"] - 0.1) < 1e-12
    assert format_spread(s, "{:.1f}", scale=100) == "60.0 +- 10.0 [50.0, 70.0] (3 seeds)"
    assert spread([0.3])["sd"] == 0.0


def test_spread_refuses_missing_values():
    with pytest.raises(ValueError, match="no values"):
        spread([])
    with pytest.raises(ValueError, match=r"position\(s\) \[1\]"):
        spread([0.1, math.nan])


def test_verdict_over_seeds():
    assert verdict_over_seeds({"0": "holds", "1": "holds"}) == "holds"
    assert verdict_over_seeds({"0": "holds", "1": "fails"}) == SEED_DEPENDENT
    with pytest.raises(ValueError):
        verdict_over_seeds({})


def test_seed_table_columns():
    df = seed_table({0: {"a": 1.0, "b": 2.0}, 1: {"a": 3.0, "b": 2.0}})
    assert list(df.columns) == ["seed 0", "seed 1", "mean", "sd", "min", "max"]
    assert df.loc["a", "mean"] == 2.0 and df.loc["b", "sd"] == 0.0


def test_verdicts_per_seed_overlay_each_seed_and_skip_seeds_that_did_not_recompute():
    from uws_core.report.seeds import results_with_seed, verdicts_per_seed

    R = {"nb": {"scale": "laptop", "results": {"x": 1, "y": 5, "seeds": {"0": {}, "1": {"x": 3}, "2": {"y": 0}}}}}
    r1 = results_with_seed(R, "nb", {"x": 3})
    assert r1["nb"]["results"] == {"x": 3, "y": 5, "seeds": {}} and R["nb"]["results"]["x"] == 1   # R untouched
    judge = lambda r: "holds" if r["nb"]["results"]["x"] > 2 else "fails"  # noqa: E731
    seeds = R["nb"]["results"]["seeds"]
    assert verdicts_per_seed(judge, R, "nb", seeds) == {"0": "fails", "1": "holds", "2": "fails"}
    assert verdicts_per_seed(judge, R, "nb", seeds, recomputed=lambda p: "x" in p) == {"1": "holds"}
