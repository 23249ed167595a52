"""uws_core.report.spectra_report (``uws report DIR``) on tiny ``uws spectra`` runs of PEFT adapters and checkpoints,
and the terminal table of ``uws spectrum``."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from uws_core.report import spectra_report
from uws_core.cli import main


@pytest.fixture(scope="module")
def adapter_run(adapter_population, tmp_path_factory):
    out = tmp_path_factory.mktemp("spectra") / "run"
    assert main(["spectra", str(adapter_population.dirs[0].parent), "--out", str(out)]) == 0
    return out


def table_rows(md: str) -> dict:
    """{(key, spectrum): cells} of the report's table."""
    rows = {}
    for line in md.splitlines():
        m = re.match(r"\| `([^`]+)` \| (\w+) \| (.*) \|$", line)
        if m:
            rows[(m.group(1), m.group(2))] = [c.strip() for c in m.group(3).split("|")]
    return rows


def test_report_of_adapters_has_table_figures_settings_and_null(adapter_run, capsys):
    assert main(["report", str(adapter_run)]) == 0
    assert "report.html" in capsys.readouterr().out
    md = (adapter_run / "report.md").read_text()
    summary = json.loads((adapter_run / "spectra.json").read_text())
    rows = table_rows(md)
    assert len(rows) == 6 * 3  # 6 module keys x (lora_A, lora_B, product)
    for key, res in summary["keys"].items():
        for name, spec in res["spectra"].items():
            shape, n, *vals = rows[(key, name)]
            assert shape == "x".join(map(str, spec["shape"])) and int(n) == 4
            tops, kats, null_k90 = vals[:5], vals[5:10], vals[10]
            assert [float(v) for v in tops] == pytest.approx([spec["top_evr"][k] for k in ("1", "4", "16", "32", "64")],
                                                             abs=5e-4)
            assert [int(v) for v in kats] == [spec["k_at"][t] for t in ("0.5", "0.8", "0.9", "0.95", "0.99")]
            assert int(null_k90) >= 1
    # settings and recipe
    assert "| unfolding | rows |" in md and "| models (N) | 4 |" in md and "authors' recipe" in md
    assert "Marchenko-Pastur" in md and "not finished" not in md
    # one figure per module type, each referenced by the page, and a PNG
    figs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    modules = {res["module"] for res in summary["keys"].values()}
    assert len(figs) == len(modules) >= 2
    for rel in figs:
        assert (adapter_run / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (adapter_run / "report.html").read_text()
    assert page.count("<table>") == 2 and all(f'src="{rel}"' in page for rel in figs)


def test_an_interrupted_run_is_reported_from_its_keys(adapter_run, tmp_path):
    import shutil

    run = tmp_path / "partial"
    shutil.copytree(adapter_run, run)
    (run / "spectra.json").unlink()
    for extra in sorted((run / "keys").glob("*.json"))[2:]:
        extra.unlink()
    md, _ = spectra_report.write_report(run)
    text = md.read_text()
    assert "has not finished" in text and len(table_rows(text)) == 2 * 3


def test_checkpoint_run_report(checkpoint_population, tmp_path):
    out = tmp_path / "ck"
    assert main(["spectra", *map(str, checkpoint_population.dirs), "--out", str(out), "--unfolding", "cols"]) == 0
    md, page = spectra_report.write_report(out)
    rows = table_rows(md.read_text())
    assert len(rows) == 16 and {s for _, s in rows} == {"weight"}
    assert "cols unfolding" in md.read_text() and page.is_file()


def test_bad_directories_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "missing")])
    assert exc.value.code == 2 and "missing is not a directory" in capsys.readouterr().err
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path)])
    assert "run.json: the run settings is not valid JSON" in capsys.readouterr().err


def test_null_shapes_follow_the_unfolding_and_centring():
    spec = {"unfolding": "rows", "center": "models", "N": 5, "shape": [6, 4]}
    assert spectra_report.null_samples_features(spec, "weight") == (24, 4)  # (N - 1) d_out rows of d_in
    spec_a = {"unfolding": "rows", "center": "samples", "N": 5, "shape": [2, 7]}  # A: (r, d_in)
    assert spectra_report.null_samples_features(spec_a, "lora_A") == (9, 7)
    spec_b = {"unfolding": "cols", "center": "samples", "N": 5, "shape": [8, 2]}  # B: (d_out, r)
    assert spectra_report.null_samples_features(spec_b, "lora_B") == (9, 8)
    spec_p = {"unfolding": "rows", "center": "models", "N": 5, "shape": [8, 7]}
    assert spectra_report.null_samples_features(spec_p, "product", rank=10) == (10, 7)  # N r directions
    assert spectra_report.null_samples_features({**spec_p, "center": "samples"}, "product", rank=10) == (9, 7)
    assert spectra_report.null_samples_features({**spec, "unfolding": "model"}, "weight") == (4, 24)


def test_null_matches_a_sampled_gaussian_stack():
    """The MP null's k at 90% is that of i.i.d. Gaussian stacks of the same shape, within 2 components."""
    from uws_core.linalg.spectral import stack_spectrum

    rng = np.random.default_rng(0)
    n, d_out, d_in = 12, 60, 40
    got = [stack_spectrum(rng.standard_normal((n, d_out, d_in)), "rows", "models").k_at(0.9) for _ in range(3)]
    null = spectra_report.null_evr({"unfolding": "rows", "center": "models", "N": n, "shape": [d_out, d_in]}, "weight")
    assert abs(spectra_report.k_at(null, 0.9) - np.mean(got)) <= 2
    assert null.sum() == pytest.approx(1.0, abs=1e-12)


def test_spectrum_prints_a_short_table(adapter_population, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["spectrum", str(adapter_population.dirs[0].parent), "--unfolding", "rows", "--k", "4",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    lines = text.splitlines()
    assert lines[0].startswith("rows unfolding, centre models, N=4 adapters")
    assert lines[1].split() == ["module", "spectrum", "keys", "shape", "top-4", "EVR", "k@50%", "k@90%", "k@99%"]
    modules = sorted({r["module"] for r in res["keys"].values()})
    body = [ln.split() for ln in lines[2:-1]]
    assert len(body) == 3 * len(modules) and lines[-1].startswith("wrote spectra of 6 keys")
    for module, name, n_keys, _, top, k50, k90, k99 in body:
        specs = [r[name] for r in res["keys"].values() if r["module"] == module]
        assert int(n_keys) == len(specs)
        assert float(top) == pytest.approx(np.mean([s["top_k_evr"] for s in specs]), abs=5e-4)
        assert float(k90) == pytest.approx(np.mean([s["k_at"]["0.9"] for s in specs]), abs=0.05)


def test_kohya_run_of_mixed_ranks_is_reported(tmp_path):
    from conftest import sibling_test_module

    kohya = sibling_test_module("weights", "test_kohya")
    RANKS, write_kohya_root = kohya.RANKS, kohya.write_kohya_root

    root = write_kohya_root(tmp_path / "sdxl")
    out = tmp_path / "out"
    assert main(["spectra", str(root), "--out", str(out)]) == 0
    md, page = spectra_report.write_report(out)
    text = md.read_text()
    summary = json.loads((out / "spectra.json").read_text())
    assert "kohya LoRAs of mixed ranks" in text
    assert len(table_rows(text)) == 3 * len(summary["keys"])
    key, res = next(iter(summary["keys"].items()))
    # kohya products are analysed on the model axis: N flattened updates, one lost to the centring
    spec = res["spectra"]["product"]
    assert spec["unfolding"] == "model"
    assert spectra_report.null_samples_features(spec, "product", sum(res["ranks"])) == \
        (len(RANKS) - 1, spec["shape"][0] * spec["shape"][1])
    # the factors are recorded stacked, (sum r_i, d_in) and (sum r_i, d_out): one sample per row, less the mean row
    for name in ("lora_A", "lora_B"):
        spec = res["spectra"][name]
        assert spec["shape"][0] == sum(res["ranks"])
        assert spectra_report.null_samples_features(spec, name, stacked=True) == (sum(res["ranks"]) - 1, spec["shape"][1])
        assert len(spectra_report._key_null(res, name)) == min(sum(res["ranks"]) - 1, spec["shape"][1])
