"""uws_core.report.paper_scale_checks on small PEFT adapters and a synthetic phase1_report written to match them."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_adapters
from uws_core.report import paper_scale_checks as psc
from uws_core.weights.adapters import AdapterSet


def reference_topk(aset, key, k):
    """analyze.py L116-123 in numpy: dW = B @ A unscaled, flattened, centred, Gram eigenvalues."""
    b, a = (t.numpy() for t in aset.factors(key))
    x = np.einsum("nor,nri->noi", b, a).reshape(len(aset), -1)
    xc = x - x.mean(0)
    ev = np.clip(np.linalg.eigvalsh(xc @ xc.T)[::-1], 0, None)
    return ev[:k].sum() / ev.sum()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    aset = AdapterSet.from_dirs(write_adapters(tmp_path_factory.mktemp("p1"), n=6, r=4, alpha=32, seed=3).dirs)
    # a synthetic report in phase1_report.json's per-module format, as a float32 GPU run would round it
    report = {psc.replication_module_name(key): {"N": 6, **{f"top{k}_vit": float(np.float32(reference_topk(aset, key, k)))
                                                          for k in (1, 2, 4)}}
              for key in aset.module_keys}
    return aset, report


def test_reproduces_a_matching_report(small):
    aset, report = small
    table = psc.compare_with_phase1_report(aset, report, ks=(1, 2, 4))
    assert len(table) == 3 * len(aset.module_keys) and table.ok.all()
    assert table.abs_diff.max() < 1e-6  # float32 rounding only
    v = psc.phase1_verdict(table)
    assert v["reproduced"] and v["n_failing"] == 0 and v["modules"] == 6


def test_flags_a_module_off_by_more_than_the_tolerance(small):
    aset, report = small
    bad = {m: dict(r) for m, r in report.items()}
    name = sorted(bad)[1]
    bad[name]["top2_vit"] += 2e-3
    bad[sorted(bad)[2]]["top1_vit"] += 5e-4  # within 1e-3: still ok
    table = psc.compare_with_phase1_report(aset, bad, ks=(1, 2, 4))
    v = psc.phase1_verdict(table)
    assert not v["reproduced"] and v["n_failing"] == 1 and v["worst"] == f"{name} k=2"


def test_refuses_other_populations(small):
    aset, report = small
    with pytest.raises(KeyError, match="only in the report"):
        psc.compare_with_phase1_report(aset, {**report, "model.layers.9.self_attn.q_proj": report[sorted(report)[0]]})
    with pytest.raises(ValueError, match="N = 100"):
        psc.compare_with_phase1_report(aset, {m: {**r, "N": 100} for m, r in report.items()})


def test_published_report_shape_and_population_order():
    ids = [f"Lots-of-LoRAs/Mistral-7B-Instruct-v0.2-4b-r16-task{i}" for i in range(1, 130)] + ["other/x"]
    first = psc.replication_adapter_ids(ids, 100)
    assert first[0].endswith("task1") and first[1].endswith("task10") and len(first) == 100  # string order
    with pytest.raises(ValueError, match="first 200"):
        psc.replication_adapter_ids(ids, 200)
    from uws_core.report import published
    mods = published.replication_phase1_modules()
    assert len(mods) == 96 and all(m["N"] == 100 and m["rank"] == 16 for m in mods.values())
