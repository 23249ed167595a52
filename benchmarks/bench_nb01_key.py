"""Benchmark: notebook 01's spectra of one module key at paper scale (issue 15's "notebook 01 at N = 500" target).

Writes N PEFT adapters at the real Mistral-7B shapes for one layer (``bench_paper_shapes.write_adapters``: q, k, v
with a planted subspace), then for its k_proj and q_proj keys times what notebook 01 computes per key: the views of
``experiments.views.lora_view_spectra`` (A rows and B cols of the authors' recipe, the model axis of the
replication, the product rows) for the trained adapters and for both Gaussian nulls of ``linalg.nulls.gaussian_lora_like``
(per-adapter and pooled variance), as the notebook's ``spectra_table`` does (notebooks/01, the cell defining it).
Runs unpinned (as ``UWS_SCALE=paper`` does). The 96-key time is extrapolated as 32 x (q + 2 k), labelled so.

``python -m benchmarks.bench_nb01_key [--n 500] [--out FILE.json]`` (about 3 minutes at N = 500 on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from uws_core.linalg.numerics import release_pin

release_pin()  # before torch loads: notebook 01 at paper scale runs unpinned

import torch  # noqa: E402

from benchmarks.bench_paper_shapes import write_adapters  # noqa: E402
from uws_core.experiments.views import lora_view_spectra  # noqa: E402
from uws_core.linalg.nulls import gaussian_lora_like  # noqa: E402
from uws_core.weights.adapters import AdapterSet  # noqa: E402

#: notebook 01's VIEWS (its cell of that name)
VIEWS = {"A (rows, authors)": None, "B (cols, authors)": None,
         "B@A (model axis, replication)": ("model", "models"), "B@A (rows)": ("rows", "models")}


def time_keys(root: Path, seed: int = 0) -> dict:
    """Seconds per module (k_proj, q_proj) of the trained views and both nulls, as notebook 01 computes them."""
    aset = AdapterSet(sorted(p for p in (root / "synthetic").iterdir()))
    out = {}
    for i, key in enumerate(aset.module_keys):
        module = key.split(".")[-1]
        if module == "v_proj":  # the same shapes as k_proj
            continue
        t0 = time.perf_counter()
        B, A = aset.factors(key)
        lora_view_spectra(B, A, aset.scalings, VIEWS)
        for match in ("per_model", "pooled"):
            lora_view_spectra(*gaussian_lora_like(B, A, seed=seed + i, match=match), aset.scalings, VIEWS)
        out[module] = time.perf_counter() - t0
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="adapters")
    ap.add_argument("--out", type=Path, default=None, help="JSON file of the results (default: print only)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="uws-nb01-"))
    try:
        write_adapters(work, args.n, 1)
        load = os.getloadavg()
        per_key = time_keys(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = {"n": args.n, "threads": torch.get_num_threads(), "load_before": load, "load_after": os.getloadavg(),
           "seconds_per_key": per_key, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "extrapolated_96_keys_h": 32 * (per_key["q_proj"] + 2 * per_key["k_proj"]) / 3600,
           "note": "96 keys extrapolated as 32 x (q + 2 k), not measured"}
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
