"""Benchmark: streaming population spectra from sharded checkpoints, against the disk's own read rate.

Writes N Llama-shaped checkpoints at reduced width with transformers' ``save_pretrained`` in the real
sharded layout (``model-0000x-of-0000y.safetensors`` + ``model.safetensors.index.json``, bfloat16), then

1. disk: reads the same shard files with plain sequential ``read`` calls after dropping them from the page
   cache (``fsync`` + ``posix_fadvise(DONTNEED)``): the disk's own sequential read rate; and once more warm;
2. streaming: ``uws_core.weights.population_spectra.population_spectra`` (rows unfolding, centred by the mean
   matrix, the authors' recipe) over the 7 projection matrices of every layer, again from a dropped cache,
   splitting each key's time into reading (``MatrixPopulation.load_stored``: the tensor's bytes in their
   stored dtype) and computing (finiteness check, float64 upcast and Gram updates on the device, then the
   eigenvalues);
3. rates: the loader's read throughput / the disk's rate; the Gram update rate in GFLOP/s (a Gram update of
   a (d_out, d_in) matrix costs ``2 d_out d_in^2`` flops), timed alone on the costliest shape; the
   eigenvalue time ``c d^3`` fitted on ``torch.linalg.eigvalsh`` at this population's sizes; and the time
   model (Gram flops / rate + c d^3 per key) against the measured compute time of the pass.

From these measured rates and the real shapes in ``data_manifests/`` it computes the disk, memory and time of
the paper-scale runs (the formulas are in ``docs/paper_scale.md`` and in :func:`paper_estimates`).

Run ``python -m benchmarks.bench_streaming`` (a few minutes on 2 shared cores) or ``--quick`` (seconds);
writes ``streaming_results.md`` and ``streaming_results.json`` next to this file (or to ``--out``).
The machine is shared with other jobs: wall and CPU (process) times are both given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJ = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$"
# Llama-3-8B proportions at reduced width: q/o d x d, k/v d/4 x d (GQA 4:1), gate/up 3.5d x d, down d x 3.5d
FULL = dict(n_models=8, hidden=1024, layers=4, vocab=4096, shard="60MB")
QUICK = dict(n_models=3, hidden=128, layers=2, vocab=512, shard="200KB")
GIB = 2 ** 30


def write_population(root: Path, n: int, hidden: int, layers: int, vocab: int, shard: str) -> list[Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 7 // 2, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64)
    dirs = []
    for i in range(n):
        torch.manual_seed(i)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(root / f"model_{i}", max_shard_size=shard)
        dirs.append(root / f"model_{i}")
    return dirs


def drop_from_cache(paths) -> None:
    """Write back and drop the files' pages from the page cache, so the next read comes from the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def plain_read(paths, block: int = 16 << 20) -> dict:
    """Read every file sequentially in 16 MiB blocks; wall and CPU seconds, bytes."""
    buf = bytearray(block)
    view = memoryview(buf)
    n_bytes, w0, c0 = 0, time.perf_counter(), time.process_time()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while (n := f.readinto(view)) > 0:
                n_bytes += n
    return {"bytes": n_bytes, "wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}


def gram_rate(d_rows: int, d_feat: int, repeat: int = 3) -> dict:
    """GEMM-equivalent float64 GFLOP/s (``2 d_rows d_feat^2`` flops / time) of one Gram update ``G += X^T X`` with
    X (d_rows, d_feat), for the kernel ``StreamingSpectrum`` uses in this process (``spectral.use_syrk``: BLAS
    dsyrk on the lower triangle when unpinned, torch ``addmm_`` when pinned) and for torch's ``addmm_`` beside it."""
    import torch

    from uws_core.linalg.scatter import syrk_lower_update, use_syrk

    x = torch.randn(d_rows, d_feat, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = torch.zeros(d_feat, d_feat, dtype=torch.float64)
    flops = 2 * d_rows * d_feat ** 2
    kernels = {"addmm": lambda: g.addmm_(x.T, x), "syrk": lambda: syrk_lower_update(g, x)}
    best = {}
    for name, run in kernels.items():
        best[name] = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    used = "syrk" if use_syrk(g) else "addmm"
    return {"shape": [d_rows, d_feat], "kernel": used, "seconds": best[used], "GFLOPs": flops / best[used] / 1e9,
            "by_kernel": {k: {"seconds": v, "GFLOPs": flops / v / 1e9} for k, v in best.items()}}


def eig_fit(sizes) -> dict:
    """Seconds of the float64 eigenvalues ``StreamingSpectrum.finalize`` computes (``subspace.eigh_descending``
    with k = 0: two-stage LAPACK from d = 1024, ``uws_core.linalg.eigvals``) at each size (best of 2), the
    least-squares ``c`` of ``t = c d^3``, and torch's ``eigvalsh`` beside it."""
    import numpy as np
    import torch

    from uws_core.linalg.subspace import eigh_descending

    times, torch_times = {}, {}
    for d in sizes:
        x = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
        g = x @ x.T
        times[d] = torch_times[d] = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            eigh_descending(g, 0)
            times[d] = min(times[d], time.perf_counter() - t0)
            t0 = time.perf_counter()
            torch.linalg.eigvalsh(g)
            torch_times[d] = min(torch_times[d], time.perf_counter() - t0)
    d3 = np.array([d ** 3 for d in sizes], dtype=float)
    t = np.array([times[d] for d in sizes])
    return {"seconds": {str(d): times[d] for d in sizes}, "c_per_d3": float((d3 @ t) / (d3 @ d3)),
            "torch_eigvalsh_seconds": {str(d): torch_times[d] for d in sizes}}


def _vm(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _key_peak(dirs, key, unfolding, out, queue) -> None:
    """Child process: peak resident memory added by one key's streamed spectrum, against its stated bound."""
    import torch

    from uws_core.weights.population_spectra import MatrixPopulation, population_spectra

    pop = MatrixPopulation(dirs)
    # start BLAS / LAPACK once (their thread buffers are a fixed cost of the process, not of the key)
    g = torch.randn(256, 256, dtype=torch.float64)
    torch.linalg.eigvalsh(g @ g.T)
    population_spectra(pop, out + "-warm", unfolding, "models", keys=["model.layers.0.self_attn.k_proj.weight"],
                       device="cpu", progress=False)
    queue.put({"process_overhead_bytes": _vm("VmRSS")})
    base = _vm("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    res = population_spectra(pop, out, unfolding, "models", keys=[key], device="cpu", progress=False)
    queue.put({"key": key, "unfolding": unfolding, "peak_added_bytes": _vm("VmHWM") - base, "peak_reset": reset,
               "bound_bytes": res["keys"][key]["memory_bound_bytes"]["total"]})


def key_peaks(dirs, work: Path) -> list[dict]:
    """Measured peak memory of the largest keys (fresh child each) beside :func:`memory_bound_bytes`."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = []
    for i, (key, unf) in enumerate((("model.layers.0.mlp.down_proj.weight", "rows"),
                                    ("model.layers.0.mlp.gate_proj.weight", "rows"),
                                    ("model.layers.0.mlp.gate_proj.weight", "model"))):
        q = ctx.Queue()
        p = ctx.Process(target=_key_peak, args=([str(d) for d in dirs], key, unf, str(work / f"peak{i}"), q))
        p.start()
        overhead = q.get(timeout=600)
        out.append({**q.get(timeout=600), **overhead})
        p.join()
    return out


def measure(cfg: dict, work: Path) -> dict:
    import torch

    from uws_core.weights.population_spectra import MatrixPopulation, population_spectra

    t0 = time.perf_counter()
    dirs = write_population(work / "pop", cfg["n_models"], cfg["hidden"], cfg["layers"], cfg["vocab"], cfg["shard"])
    write_s = time.perf_counter() - t0
    shards = sorted(p for d in dirs for p in d.glob("model-*-of-*.safetensors"))
    assert shards and all((d / "model.safetensors.index.json").is_file() for d in dirs), "not sharded"
    drop_from_cache(shards)
    cold = plain_read(shards)
    warm = plain_read(shards)
    pop = MatrixPopulation(dirs)
    drop_from_cache(shards)
    w0, c0 = time.perf_counter(), time.process_time()
    res = population_spectra(pop, work / "spectra", "rows", "models", keys=PROJ, device="cpu", progress=False)
    stream_wall, stream_cpu = time.perf_counter() - w0, time.process_time() - c0
    drop_from_cache(shards)
    cold_again = plain_read(shards)  # same conditions as the loader's pass (the VM's host may cache the disk)
    per_key = []
    for key, r in res["keys"].items():
        d_out, d_in = r["shape"]
        per_key.append({"key": key, "shape": [d_out, d_in], "stored_bytes": len(dirs) * d_out * d_in * 2,
                        "gram_flops": len(dirs) * 2 * d_out * d_in ** 2, **r["timing"]})
    load_s = sum(k["load_s"] for k in per_key)
    comp_s = sum(k["compute_s"] for k in per_key)
    stored = sum(k["stored_bytes"] for k in per_key)
    d_ins = sorted({k["shape"][1] for k in per_key})
    eig = eig_fit(d_ins)  # the feature sizes of this population's rows unfoldings
    big = max(per_key, key=lambda k: k["gram_flops"])  # the shape that dominates the Gram cost
    gemm = gram_rate(*big["shape"])
    flops = sum(k["gram_flops"] for k in per_key)
    # the time model of paper_estimates, checked on the keys measured here
    predicted = sum(k["gram_flops"] / (gemm["GFLOPs"] * 1e9) + eig["c_per_d3"] * k["shape"][1] ** 3 for k in per_key)
    return {
        "config": cfg, "n_shards": len(shards), "checkpoint_bytes": cold["bytes"], "write_s": write_s,
        "disk_cold": {**cold, "MBps": cold["bytes"] / cold["wall_s"] / 1e6},
        "disk_warm": {**warm, "MBps": warm["bytes"] / warm["wall_s"] / 1e6},
        "disk_cold_after": {**cold_again, "MBps": cold_again["bytes"] / cold_again["wall_s"] / 1e6},
        "stream": {"wall_s": stream_wall, "cpu_s": stream_cpu, "load_s": load_s, "compute_s": comp_s,
                   "stored_bytes_read": stored, "read_MBps": stored / load_s / 1e6,
                   "gram_flops": flops, "predicted_compute_s": predicted, "n_keys": len(per_key)},
        "eig": eig, "gemm": gemm, "per_key": per_key, "torch_threads": torch.get_num_threads(), "peaks": key_peaks(dirs, work),
    }


# ------------------------------------------------------------------------------- paper-scale estimates

def family_shapes():
    """(d_out, d_in) of the analysed matrices per family, from the manifests' expected_shapes (real shapes)."""
    from uws_core.weights.manifests import load_manifest, parse_expected_shapes

    llama = parse_expected_shapes(load_manifest("llama8b")["expected_shapes"][0])
    vit = parse_expected_shapes(load_manifest("vit")["expected_shapes"][0])
    vit["output.dense.weight"] = (768, 3072)  # fc2 (its suffix also ends attention.output.dense: not in the manifest)
    lora = parse_expected_shapes(load_manifest("mistral7b_loras")["expected_shapes"][0])
    return ({k: v for k, v in llama.items()}, 32), (vit, 12), (lora, 32)


def paper_estimates(rates: dict) -> list[dict]:
    """Disk, per-key memory bound and time of the paper-scale spectra passes, from measured rates.

    Time = bytes read / read rate + f (Gram flops / Gram rate + sum over eigenproblems of c d^3), where f is
    the measured compute time of the benchmark's pass over the time model on the same keys, and
    * a dense key (d_out, d_in), rows unfolding: ``2 N d_out d_in^2`` Gram flops and one ``d_in``-sized eig;
    * model axis (ViT notebook 02): ``N^2 d_out d_in`` flops (N(N+1)/2 inner products of length D) + an N eig;
    * a LoRA key (rank r): A rows ``2 N r d_in^2``, B cols ``2 N r d_out^2``, product rows ``2 N r d_in^2``
      and model axis ``N^2 r^2 (d_out + d_in)`` flops; eigs of size d_in, d_out, d_in and N.
    """
    from uws_core.weights.memory_bounds import memory_bound_bytes

    (llama, n_l), (vit, n_v), (lora, n_m) = family_shapes()
    rate_read, c_eig = rates["read_MBps"] * 1e6, rates["c_per_d3"] * rates["calibration"]
    rate_gram = rates["gram_GFLOPs"] * 1e9 / rates["calibration"]
    out = []

    def dense(name, shapes, layers, n, stored_bytes, model_bytes, views, nulls):
        keys = [s for s in shapes.values() for _ in range(layers)]
        read = n * sum(a * b for a, b in keys) * stored_bytes
        flops = eig = 0.0
        for a, b in keys:
            if "rows" in views:
                flops += 2 * n * a * b ** 2
                eig += c_eig * b ** 3
            if "model" in views:
                flops += n * n * a * b
                eig += c_eig * n ** 3
        flops, eig = flops * nulls, eig * nulls
        mem = max(memory_bound_bytes(s, n, v, "models", stored_bytes, chunk=max(1, min(64, GIB // (8 * s[0] * s[1]))))["total"]
                  for s in shapes.values() for v in views)
        out.append({"run": name, "N": n, "keys": len(keys), "disk_GB": n * model_bytes / 1e9, "read_GB": read / 1e9,
                    "read_h": read / rate_read / 3600, "gram_PFLOP": flops / 1e15, "gram_h": flops / rate_gram / 3600,
                    "eig_h": eig / 3600, "max_key_GiB": mem / GIB,
                    "total_h_cpu_here": (read / rate_read + flops / rate_gram + eig) / 3600})

    llama_params = sum(a * b for a, b in llama.values()) * n_l + 2 * 128256 * 4096  # + embeddings and lm_head
    dense("Llama-3-8B, `uws spectra` rows (224 keys)", llama, n_l, 50, 2, llama_params * 2, ("rows",), 1)
    vit_params = sum(a * b for a, b in vit.values()) * n_v + 768 * 3 * 16 * 16 + 197 * 768  # + patch/pos embeddings
    dense("ViT-B/16, notebook 02 (rows + model axis, trained + null)", vit, n_v, 470, 4, vit_params * 4,
          ("rows", "model"), 2)
    # Mistral LoRAs, notebook 01: A, B, product rows and model axis, for the trained adapters and 2 nulls
    n, r = 500, 16
    mods = {m: (lora[f"{m}.lora_B.weight"][0], lora[f"{m}.lora_A.weight"][1]) for m in ("q_proj", "k_proj", "v_proj")}
    read = flops = eig = 0.0
    for d_out, d_in in mods.values():
        read += n_m * n * r * (d_out + d_in) * 4
        flops += n_m * 3 * n * (2 * r * d_in ** 2 + 2 * r * d_out ** 2 + 2 * r * d_in ** 2 + n * r * r * (d_out + d_in))
        eig += n_m * 3 * c_eig * (2 * d_in ** 3 + d_out ** 3 + n ** 3)
    mem = max(memory_bound_bytes(s, n, v, "models", lora_rank=r, chunk=1024 // r)["total"]
              for s in mods.values() for v in ("rows", "model"))
    per_adapter = sum(r * (a + b) for a, b in mods.values()) * n_m
    out.append({"run": "Mistral-7B LoRAs r=16, notebook 01 (A, B, B@A rows + model axis; trained + 2 nulls)",
                "N": n, "keys": 3 * n_m, "disk_GB": n * per_adapter * 4 / 1e9, "read_GB": read / 1e9,
                "read_h": read / rate_read / 3600, "gram_PFLOP": flops / 1e15, "gram_h": flops / rate_gram / 3600,
                "eig_h": eig / 3600, "max_key_GiB": mem / GIB,
                "total_h_cpu_here": (read / rate_read + flops / rate_gram + eig) / 3600})
    return out


def write_results(data: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "streaming_results.json").write_text(json.dumps(data, indent=1))
    m, s = data["measured"], data["measured"]["stream"]
    lines = [
        "# Streaming population spectra: read and compute rates",
        "",
        "Written by `python -m benchmarks.bench_streaming" + (" --quick" if data["quick"] else "") + "` "
        "(see its docstring). " + data["machine"],
        "",
        f"Population: {m['config']['n_models']} Llama-shaped checkpoints (hidden {m['config']['hidden']}, "
        f"{m['config']['layers']} layers, bfloat16) written by `save_pretrained` in {m['n_shards']} shards "
        f"(`model-0000x-of-0000y.safetensors` + index), {m['checkpoint_bytes'] / 1e6:.0f} MB on disk; "
        f"spectra of {s['n_keys']} projection matrices (rows unfolding, centred by the mean matrix), on the CPU.",
        "",
        "| measurement | bytes | wall s | CPU s | rate |",
        "|---|---|---|---|---|",
        f"| plain sequential read, page cache dropped, first read of the files (the disk) | {m['disk_cold']['bytes'] / 1e6:.0f} MB | "
        f"{m['disk_cold']['wall_s']:.2f} | {m['disk_cold']['cpu_s']:.2f} | {m['disk_cold']['MBps']:.0f} MB/s |",
        f"| plain sequential read, page cache dropped, after the streaming pass | {m['disk_cold_after']['bytes'] / 1e6:.0f} MB | "
        f"{m['disk_cold_after']['wall_s']:.2f} | {m['disk_cold_after']['cpu_s']:.2f} | {m['disk_cold_after']['MBps']:.0f} MB/s |",
        f"| plain sequential read, warm (page cache) | {m['disk_warm']['bytes'] / 1e6:.0f} MB | "
        f"{m['disk_warm']['wall_s']:.2f} | {m['disk_warm']['cpu_s']:.2f} | {m['disk_warm']['MBps']:.0f} MB/s |",
        f"| streaming loader (safetensors read in the stored dtype), cache dropped | {s['stored_bytes_read'] / 1e6:.0f} MB | "
        f"{s['load_s']:.2f} | - | {s['read_MBps']:.0f} MB/s ({s['read_MBps'] / m['disk_cold']['MBps']:.2f} of the first "
        f"plain read, {s['read_MBps'] / m['disk_cold_after']['MBps']:.2f} of the later one) |",
        f"| compute: float64 upcast, Gram updates, eigenvalues | {s['gram_flops'] / 1e9:.0f} GFLOP | "
        f"{s['compute_s']:.2f} | - | time model {s['predicted_compute_s']:.2f} s "
        f"({s['predicted_compute_s'] / s['compute_s']:.2f} of measured) |",
        *(f"| one Gram update `G += X^T X`, X {tuple(m['gemm']['shape'])} float64, {name} (best of 3)"
          f"{' (the kernel used)' if name == m['gemm'].get('kernel') else ''} | "
          f"{2 * m['gemm']['shape'][0] * m['gemm']['shape'][1] ** 2 / 1e9:.1f} GFLOP (GEMM-equivalent) | "
          f"{r['seconds']:.3f} | - | {r['GFLOPs']:.1f} GFLOP/s |"
          for name, r in m["gemm"].get("by_kernel", {"addmm": m["gemm"]}).items()),
        f"| whole `population_spectra` pass | - | {s['wall_s']:.2f} | {s['cpu_s']:.2f} | - |",
        "",
        "Eigenvalues as `StreamingSpectrum.finalize` computes them (`subspace.eigh_descending`, k = 0: two-stage "
        "LAPACK from d = 1024), float64, best of 2: "
        + ", ".join(f"d = {d}: {t:.3f} s" for d, t in m["eig"]["seconds"].items())
        + f"; fitted t = {m['eig']['c_per_d3']:.3e} d^3 s"
        + ("" if "torch_eigvalsh_seconds" not in m["eig"] else "; torch `eigvalsh` beside it: "
           + ", ".join(f"d = {d}: {t:.3f} s" for d, t in m["eig"]["torch_eigvalsh_seconds"].items()))
        + ".",
        "",
        "Per key (load = read through the loader, compute = Gram updates + eigenvalues):",
        "",
        "| key | (d_out, d_in) | load s | compute s |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{k['key']}` | {tuple(k['shape'])} | {k['load_s']:.3f} | {k['compute_s']:.3f} |" for k in m["per_key"]]
    lines += ["", "Memory of one key, measured (peak resident memory added while the key runs, in a fresh process after "
              "BLAS/LAPACK were started on a small key) against the bound stated per key (`memory_bound_bytes`, from "
              "the shapes). The process itself (Python, torch, libraries) held "
              f"{max(p['process_overhead_bytes'] for p in m['peaks']) / 1e6:.0f} MB before the key.", "",
              "| key | unfolding | measured peak MB | stated bound MB | measured / bound |", "|---|---|---|---|---|"]
    lines += [f"| `{p['key']}` | {p['unfolding']} | {p['peak_added_bytes'] / 1e6:.1f} | {p['bound_bytes'] / 1e6:.1f} | "
              f"{p['peak_added_bytes'] / p['bound_bytes']:.2f} |" for p in m["peaks"]]
    lines += ["", "## Paper scale, from these rates and the real shapes", "",
              "Formulas in `paper_estimates` (and docs/paper_scale.md). Rates: read "
              f"{data['rates']['read_MBps']:.0f} MB/s, Gram {data['rates']['gram_GFLOPs']:.1f} GFLOP/s, eig "
              f"{data['rates']['c_per_d3']:.3e} d^3 s, times the calibration f = {data['rates']['calibration']:.2f} "
              "(measured compute / time model on the keys above); this 2-core CPU, float64.", "",
              "| run | N | keys | disk GB | read GB | read h | Gram PFLOP | Gram h | eig h | max memory per key GiB | total h (this CPU) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {e['run']} | {e['N']} | {e['keys']} | {e['disk_GB']:.1f} | {e['read_GB']:.1f} | {e['read_h']:.2f} | "
              f"{e['gram_PFLOP']:.3f} | {e['gram_h']:.1f} | {e['eig_h']:.2f} | {e['max_key_GiB']:.2f} | "
              f"{e['total_h_cpu_here']:.1f} |" for e in data["paper"]]
    (out / "streaming_results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for tests")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write streaming_results.md/json")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the checkpoints (default: a temp dir)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from uws_core.linalg.numerics import release_pin

    release_pin()  # paper-scale rates: unpinned, as `uws spectra` and UWS_SCALE=paper run (before torch loads)
    import torch

    cfg = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="uws-bench-", dir=args.workdir))
    t0 = time.perf_counter()
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        measured = measure(cfg, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    st = measured["stream"]
    rates = {"read_MBps": min(st["read_MBps"], measured["disk_cold"]["MBps"]),
             "gram_GFLOPs": measured["gemm"]["GFLOPs"], "c_per_d3": measured["eig"]["c_per_d3"],
             # measured compute of the pass / the time model on the same keys: the upcast, the running mean,
             # memory traffic and the other jobs on the cores, which the GEMM and eig timings alone leave out
             "calibration": st["compute_s"] / st["predicted_compute_s"]}
    machine = (f"Machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; total "
               f"{time.perf_counter() - t0:.0f} s; load average before / after {load_before} / "
               + " ".join(f"{x:.1f}" for x in os.getloadavg()) + " (shared with other jobs: wall times are noisy).")
    data = {"quick": args.quick, "machine": machine, "measured": measured, "rates": rates,
            "paper": paper_estimates(rates)}
    write_results(data, args.out)
    print((args.out / "streaming_results.md").read_text())
    return data


if __name__ == "__main__":
    main()
