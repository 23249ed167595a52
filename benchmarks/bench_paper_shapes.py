"""Benchmark: `uws spectra` on Mistral-7B-shaped LoRAs, and the peers' recipes side by side (issue 15).

1. Writes N PEFT adapters at the real Mistral-7B LoRA shapes and key names (r = 16, lora_alpha = 32,
   ``base_model.model.model.layers.{l}.self_attn.{q,k,v}_proj.lora_{A,B}.weight``; q: B 4096x16 / A 16x4096,
   k and v: B 1024x16 / A 16x4096; float32 safetensors) under manifest-style ids
   (``ROOT/synthetic/mistral-7b-lora-NNN``), for a subset of the 32 layers; synthetic weights with a planted
   shared subspace (8 directions of A and of B shared by all adapters, plus noise).
2. Runs ``uws spectra ROOT --out DIR`` end to end in a child process (its defaults: lora_A rows, lora_B cols,
   product rows centred by the mean matrix) and reads the per-key load / compute times and the solver from
   ``DIR/keys/*.json``; the child's own peak RSS (VmHWM, reset at its start: ``wait4`` would count the
   parent's pages a forked child maps until exec). Once more on one q and one k key alone, for the
   peak RSS per shape class.
3. On one k_proj-shaped module at N = ``--peer-n``, each in a fresh child process under each thread setting
   of ``--threads`` (time = best of ``--repeat``, wall and CPU; peak RSS from ``ru_maxrss``):

   * the replication's recipe, written from cahlen/universal-subspace-stress-test
     ``experiments/phase1_lora_spectral/analyze.py`` (``spectrum_via_gram``, lines 56-66, and the loop at
     100-112): float32, ``dW = einsum(B, A)`` materialised (N, d_out, d_in), flattened, mean subtracted,
     N x N Gram, ``eigvalsh``; against uws ``factored_product_spectrum(B, A, "model", "models")`` (the same
     N x N Gram from the (N r)^2 factor Grams, float64, no d_out x d_in matrix);
   * the authors' recipe, written from toshi2k2/unisub ``Mistral_LoRAs/run_pca.py`` (lines 96-112): the mean
     A across adapters subtracted from every A_i, the A_i concatenated to (N r, d_in) float32, sklearn
     ``PCA(n_components=min(300, N r - 1, d_in - 1)).fit_transform`` (a numpy SVD of the same matrix when
     sklearn is missing); against uws ``stacked_rows_spectrum(A, "models")`` (float64 (N r)^2 Gram);
   * float64 references: the model-axis Gram of the float64 products (formed 10 adapters at a time) and
     ``numpy.linalg.svd`` of the centred float64 A stack. Each recipe's top-16 EVR must be within 1e-6 of its
     reference; the largest EVR difference over all reported components is given too.

4. ``uws spectra`` once more at N = ``--large-n`` (500) on ``--large-layers`` (1) layer, under the first thread
   setting: there N r = 8000 >= d = 4096 and each view's d x d Gram is formed from the factors
   (solver "factor_feature_gram").
5. With ``--solvers 1``: the eigensolvers compared at the real shapes (``benchmarks/bench_eigensolvers.py``).

Every child runs without the laptop populations' MKL pin (:func:`uws_core.linalg.numerics.unpinned_env`), as the
``uws`` command and paper scale do: under ``MKL_CBWR=COMPATIBLE`` torch's float64 GEMMs ran 3-5x slower here,
which slowed the peers' torch code and ours alike.

Extrapolations to the 96 keys of Mistral-7B (from the measured per-key means of each shape class) are labelled
as such in the results. Run ``python -m benchmarks.bench_paper_shapes`` (default: N = 100, 2 layers, peers at
N = 100, N = 500 on 1 layer; several minutes on 2 shared cores) or with
``--n 3 --layers 1 --peer-n 6 --large-n 4 --repeat 1 --threads default --solvers 0`` (the
test). Writes ``paper_shapes_results.json`` / ``.md`` next to this file (or to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RANK, ALPHA, SEED, N_SHARED = 16, 32, 0, 8
PAPER_HIDDEN = 4096  # Mistral-7B's hidden size
#: UWS_BENCH_HIDDEN scales every shape down for the tests (the benchmark itself always runs the paper's 4096)
HIDDEN = int(os.environ.get("UWS_BENCH_HIDDEN", PAPER_HIDDEN))
SHAPES = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN // 4, HIDDEN), "v_proj": (HIDDEN // 4, HIDDEN)}  # (d_out, d_in)
KEY = "base_model.model.model.layers.{layer}.self_attn.{module}.lora_{ab}.weight"
PAPER_LAYERS, TOP, EVR_TOL = 32, 16, 1e-6


# ---------------------------------------------------------------------------------------------- adapters

def planted_factors(n: int, d_out: int, d_in: int, r: int = RANK, seed: int = SEED):
    """B (n, d_out, r), A (n, r, d_in) float32: N_SHARED shared directions per side plus 0.3x noise."""
    rng = np.random.default_rng(seed)
    u_a = rng.standard_normal((N_SHARED, d_in)) / np.sqrt(d_in)  # shared row directions of A
    u_b = rng.standard_normal((d_out, N_SHARED)) / np.sqrt(d_out)  # shared column directions of B
    a = rng.standard_normal((n, r, N_SHARED)) @ u_a + 0.3 * rng.standard_normal((n, r, d_in)) / np.sqrt(d_in)
    b = u_b @ rng.standard_normal((n, N_SHARED, r)) + 0.3 * rng.standard_normal((n, d_out, r)) / np.sqrt(d_out)
    return (1e-2 * b).astype(np.float32), a.astype(np.float32)


def write_adapters(root: Path, n: int, layers: int, modules=tuple(SHAPES), seed: int = SEED) -> list[Path]:
    """N PEFT adapter folders (adapter_config.json + adapter_model.safetensors) under root/synthetic/."""
    from safetensors.numpy import save_file

    factors = {(layer, m): planted_factors(n, *SHAPES[m], seed=seed + 100 * layer + i)
               for layer in range(layers) for i, m in enumerate(modules)}
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA, "lora_dropout": 0.0,
              "target_modules": list(modules), "base_model_name_or_path": "mistralai/Mistral-7B-v0.1",
              "bias": "none", "use_rslora": False, "fan_in_fan_out": False}
    dirs = []
    for i in range(n):
        d = root / "synthetic" / f"mistral-7b-lora-{i:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "adapter_config.json").write_text(json.dumps(config, indent=1))
        tensors = {}
        for (layer, m), (b, a) in factors.items():
            tensors[KEY.format(layer=layer, module=m, ab="A")] = np.ascontiguousarray(a[i])  # (r, d_in)
            tensors[KEY.format(layer=layer, module=m, ab="B")] = np.ascontiguousarray(b[i])  # (d_out, r)
        save_file(tensors, str(d / "adapter_model.safetensors"))
        dirs.append(d)
    return dirs


# ------------------------------------------------------------------------------------------ measurement

def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "python": platform.python_version(),
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                   "OMP_WAIT_POLICY", "UWS_DEVICE")}}


def run_child(cmd, env=None, timeout=None) -> dict:
    """Run a command; return wall seconds, CPU seconds and peak RSS (bytes) of that child alone (wait4)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{text[-3000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_bytes": ru.ru_maxrss * 1024, "output": text}


def spectra_child(argv) -> int:
    """Child process: ``uws spectra`` (argv after ``--dense 0|1`` and ``--peak-out FILE``) with its own peak RSS.

    The high-water mark is reset first: a forked child's RSS counts the parent's pages until ``exec``, so
    ``wait4``'s ``ru_maxrss`` would report the parent's size (the adapters it wrote) instead. ``--dense 1``:
    the d x d streaming route of before (``population_spectra.FACTORED_ADAPTER_KEYS = False``)."""
    import uws_core.weights.population_spectra as ps
    from uws_core.cli import main as cli_main

    dense, peak_out, rest = argv[1] == "1", Path(argv[3]), argv[4:]
    ps.FACTORED_ADAPTER_KEYS = not dense
    base = _reset_peak_rss()
    rc = cli_main(rest)
    peak_out.write_text(json.dumps({"baseline_rss_bytes": base, "peak_rss_bytes": _peak_rss()}))
    return rc


def uws_spectra_run(root: Path, out: Path, env, keys: str | None = None, dense_path: bool = False) -> dict:
    peak = out.with_name(out.name + "_peak.json")
    cmd = [sys.executable, "-c", "import sys; from benchmarks.bench_paper_shapes import spectra_child; "
           "sys.exit(spectra_child(sys.argv[1:]))", "--dense", str(int(dense_path)), "--peak-out", str(peak),
           "spectra", str(root), "--out", str(out)]
    res = run_child(cmd + (["--keys", keys] if keys else []), env=env)
    res.update(json.loads(peak.read_text()))  # the child's own peak (VmHWM after a reset), not wait4's
    per_key = []
    for path in sorted((out / "keys").glob("*.json")):
        k = json.loads(path.read_text())
        per_key.append({"key": k["key"], "module": k["module"], "solver": k.get("solver", "streaming d x d"),
                        "load_s": k["timing"]["load_s"], "compute_s": k["timing"]["compute_s"],
                        "memory_bound_bytes": k["memory_bound_bytes"]["total"],
                        "top16_evr": {v: k["spectra"][v]["top_evr"]["16"] for v in k["spectra"]}})
    return {"wall_s": res["wall_s"], "cpu_s": res["cpu_s"], "peak_rss_bytes": res["peak_rss_bytes"],
            "baseline_rss_bytes": res["baseline_rss_bytes"], "keys": per_key}


# --------------------------------------------------------------------------------------- peers' recipes

def _replication(b, a):
    """cahlen/universal-subspace-stress-test analyze.py: float32 dW materialised, N x N Gram, eigvalsh."""
    import torch

    bt, at = torch.from_numpy(b), torch.from_numpy(a)
    dw = torch.einsum("nor,nri->noi", bt, at)  # (N, d_out, d_in) float32
    xf = dw.reshape(dw.shape[0], -1)
    xc = xf - xf.mean(dim=0)
    ev = torch.clamp(torch.linalg.eigvalsh(xc @ xc.T).flip(0), min=0.0)  # (N,)
    return (ev / ev.sum()).numpy().astype(np.float64)


def _uws_model_axis(b, a):
    from uws_core.linalg.factored_spectra import factored_product_spectrum

    return factored_product_spectrum(b, a, "model", "models", device="cpu").evr()


def _authors(b, a):
    """toshi2k2/unisub Mistral_LoRAs/run_pca.py: mean A subtracted, concatenated (N r, d_in), sklearn PCA."""
    data = np.concatenate(list(a - a.mean(axis=0)), axis=0)  # (N r, d_in) float32
    n_comp = min(300, data.shape[0] - 1, data.shape[1] - 1)
    try:
        from sklearn.decomposition import PCA
    except ImportError:  # the same PCA by a full SVD of the column-centred data
        xc = data - data.mean(axis=0)
        s = np.linalg.svd(xc, compute_uv=False)
        return (s ** 2 / (xc ** 2).sum())[:n_comp].astype(np.float64)
    pca = PCA(n_components=n_comp)
    pca.fit_transform(data)
    return pca.explained_variance_ratio_.astype(np.float64)


def _uws_authors(b, a):
    from uws_core.linalg.factored_spectra import stacked_rows_spectrum

    return stacked_rows_spectrum(a, "models", device="cpu").evr()


def _reference_model_axis(b, a):
    n = b.shape[0]
    gram = np.zeros((n, n))
    prods = [b[i0:i0 + 10].astype(np.float64) @ a[i0:i0 + 10].astype(np.float64) for i0 in range(0, n, 10)]
    flat = [p.reshape(p.shape[0], -1) for p in prods]  # float64 products, 10 adapters per block
    for i, x in enumerate(flat):
        for j, y in enumerate(flat):
            gram[10 * i:10 * i + x.shape[0], 10 * j:10 * j + y.shape[0]] = x @ y.T
    h = np.eye(n) - 1.0 / n
    ev = np.clip(np.linalg.eigvalsh(h @ gram @ h)[::-1], 0, None)
    return ev / np.trace(h @ gram @ h)


def _reference_authors(b, a):
    a64 = a.astype(np.float64)
    xc = (a64 - a64.mean(axis=0)).reshape(-1, a.shape[2])
    s = np.linalg.svd(xc, compute_uv=False)
    return s ** 2 / (xc ** 2).sum()


RECIPES = {"replication": _replication, "uws_model_axis": _uws_model_axis, "authors": _authors,
           "uws_authors": _uws_authors, "reference_model_axis": _reference_model_axis,
           "reference_authors": _reference_authors}


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def _reset_peak_rss() -> int:
    """Reset the kernel's RSS high-water mark (Linux: ``5`` to /proc/self/clear_refs); return the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _status_bytes("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss() -> int:
    """Peak RSS since :func:`_reset_peak_rss` (VmHWM), else the process's whole-life peak."""
    return _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def recipe_worker(name: str, factors: Path, repeat: int, out: Path) -> None:
    """Child process: time one recipe on one k_proj-shaped module (best of ``repeat``), write JSON to out."""
    import torch  # noqa: F401  (libraries imported before timing and the baseline RSS: both sides pay them)

    import uws_core.linalg.factored_spectra  # noqa: F401
    try:
        import sklearn.decomposition  # noqa: F401
    except ImportError:
        pass

    with np.load(factors) as f:  # written once by the parent: the generator's temporaries stay out of the peak
        b, a = f["b"], f["a"]  # (N, d_out, r), (N, r, d_in) float32
    base = _reset_peak_rss()
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        evr = RECIPES[name](b, a)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    out.write_text(json.dumps({"recipe": name, "n": int(b.shape[0]), "wall_s": min(walls), "wall_all_s": walls, "cpu_s": min(cpus),
                               "baseline_rss_bytes": base, "peak_rss_bytes": _peak_rss(),
                               "evr": [float(v) for v in evr]}))


TIMED = ("replication", "uws_model_axis", "authors", "uws_authors")
REFERENCE_OF = {"replication": "reference_model_axis", "uws_model_axis": "reference_model_axis",
                "authors": "reference_authors", "uws_authors": "reference_authors"}


def _recipe(name: str, factors: Path, repeat: int, env, work: Path, tag: str) -> dict:
    path = work / f"recipe_{name}_{tag}.json"
    run_child([sys.executable, "-m", "benchmarks.bench_paper_shapes", "--worker", name, "--worker-factors",
               str(factors), "--repeat", str(repeat), "--worker-out", str(path)], env=env)
    return json.loads(path.read_text())


def peers(n: int, repeat: int, envs: dict, work: Path) -> dict:
    """The four timed recipes under each thread setting in ``envs``, against float64 references (run once)."""
    factors = work / "peer_factors.npz"
    b, a = planted_factors(n, *SHAPES["k_proj"], seed=SEED + 7)
    np.savez(factors, b=b, a=a)
    del b, a
    refs = {name: _recipe(name, factors, 1, envs[next(iter(envs))], work, "ref")
            for name in ("reference_model_axis", "reference_authors")}
    out = {"references": {k: {f: v for f, v in r.items() if f != "evr"} for k, r in refs.items()}}
    for tag, env in envs.items():
        res = {}
        for name in TIMED:
            r = _recipe(name, factors, repeat, env, work, tag)
            got, want = np.array(r.pop("evr")), np.array(refs[REFERENCE_OF[name]]["evr"])
            m = min(len(got), len(want))
            r.update(top16_evr=float(got[:TOP].sum()),
                     top16_diff_vs_float64=float(abs(got[:TOP].sum() - want[:TOP].sum())),
                     evr_max_diff_vs_float64=float(np.abs(got[:m] - want[:m]).max()), components_compared=m)
            r["top16_within_tol"] = r["top16_diff_vs_float64"] <= EVR_TOL
            res[name] = r
        res["speedups"] = {"model_axis_vs_replication": res["replication"]["wall_s"] / res["uws_model_axis"]["wall_s"],
                           "authors_vs_sklearn": res["authors"]["wall_s"] / res["uws_authors"]["wall_s"]}
        out[tag] = res
    return out


# ---------------------------------------------------------------------------------------------- summary

def extrapolate(run: dict, n: int) -> dict:
    """96-key time at this N from the measured per-key times of each shape class (an extrapolation)."""
    by = {}
    for k in run["keys"]:
        by.setdefault("q" if k["module"] == "q_proj" else "kv", []).append(k["load_s"] + k["compute_s"])
    per = {c: float(np.mean(v)) for c, v in by.items()}
    if not {"q", "kv"} <= set(per):
        return {"per_key_s": per}
    overhead = max(run["wall_s"] - sum(sum(v) for v in by.values()), 0.0)  # start-up, listing, writing
    total = PAPER_LAYERS * (per["q"] + 2 * per["kv"]) + overhead
    return {"per_key_s": per, "startup_s": overhead, "keys": 3 * PAPER_LAYERS, "n": n,
            "extrapolated_96_keys_s": total, "note": "extrapolated from the measured per-key means, not measured"}


def write_results(data: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_shapes_results.json").write_text(json.dumps(data, indent=1))
    m, lines = data["machine"], []
    lines += ["# Paper-shaped Mistral-7B LoRAs: `uws spectra` and the peers' recipes (issue 15)", "",
              f"Written by `benchmarks/bench_paper_shapes.py` on {data['date']}. Machine: {m['cpu']}, {m['cores']} "
              f"cores (the load averages below say how busy), torch {m['torch']} ({m['torch_threads']} threads), CUDA: "
              f"{'yes' if m['cuda'] else 'no GPU in this run: the CUDA numbers are not measured'}. Load average "
              f"before {data['load_before']}, after {data['load_after']}. Environment: {m['env']}.", "",
              *data.get("notes", [])]
    if data.get("hidden", PAPER_HIDDEN) != PAPER_HIDDEN:
        lines += [f"**Scaled-down shapes (UWS_BENCH_HIDDEN={data['hidden']}): {data['shapes']}, not Mistral-7B's.**", ""]
    if data.get("memory"):
        lines += ["## Peak memory of `uws spectra` on one key alone (the child's own VmHWM)", "",
                  "| run | solver | peak RSS MiB | of which before the key (Python, CLI imports) MiB | memory bound MiB "
                  "| compute s |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['solver']} | {v['peak_rss_mib']:.0f} | {v['baseline_rss_mib']:.0f} | "
                  f"{v['memory_bound_mib']:.0f} | {v['compute_s']:.1f} |" for k, v in data["memory"].items()]
        lines.append("")
    for tag, run in data["runs"].items():
        lines += [f"## `uws spectra`, {tag}: N = {run['n']}, {run['layers']} layers ({len(run['keys'])} keys)", "",
                  f"Wall {run['wall_s']:.1f} s, CPU {run['cpu_s']:.1f} s, peak RSS "
                  + (f"{run['peak_rss_bytes'] / 2**20:.0f} MiB (whole run)" if run.get("peak_rss_bytes")
                     else "not valid in this run (see the memory section)") + f". Threads: {run['threads']}.", "",
                  "| key | solver | load s | compute s | memory bound MiB | top-16 EVR A / B / product |",
                  "|---|---|---|---|---|---|"]
        for k in run["keys"]:
            t = k["top16_evr"]
            lines.append(f"| {k['key']} | {k['solver']} | {k['load_s']:.2f} | {k['compute_s']:.2f} | "
                         f"{k['memory_bound_bytes'] / 2**20:.0f} | {t['lora_A']:.4f} / {t['lora_B']:.4f} / "
                         f"{t['product']:.4f} |")
        ex = run["extrapolation"]
        if len(run["keys"]) == 3 * PAPER_LAYERS:
            lines += ["", f"**Measured on all 96 keys** at N = {run['n']}: {run['wall_s'] / 60:.1f} min wall, "
                      f"{run['cpu_s'] / 60:.1f} min CPU (mean per key: q {ex['per_key_s']['q']:.2f} s, "
                      f"k/v {ex['per_key_s']['kv']:.2f} s)."]
        elif "extrapolated_96_keys_s" in ex:
            lines += ["", f"**Extrapolated (not measured)** to all 96 keys at N = {run['n']}: "
                      f"{ex['extrapolated_96_keys_s'] / 60:.1f} min (mean per key: q {ex['per_key_s']['q']:.2f} s, "
                      f"k/v {ex['per_key_s']['kv']:.2f} s, plus {ex['startup_s']:.1f} s start-up)."]
        for cls, peak in (run.get("peak_per_shape_class") or {}).items():
            lines.append(f"Peak RSS of `uws spectra` on one {cls} key alone: {peak / 2**20:.0f} MiB.")
        lines.append("")
    p = data["peers"]
    lines += [f"## The peers' recipes on one k_proj-shaped module (N = {data['peer_n']}, r = {RANK}, same machine)", "",
              "Float64 references (timed once, not compared): " + ", ".join(
                  f"{k} {v['wall_s']:.1f} s" for k, v in p["references"].items()) + ".", ""]
    for tag, res in p.items():
        if tag == "references":
            continue
        lines += [f"### {tag}", "", "| recipe | wall s (best) | CPU s | peak RSS MiB (RSS before) | top-16 EVR "
                  "| top-16 diff vs float64 | max EVR diff (components) |", "|---|---|---|---|---|---|---|"]
        for name in TIMED:
            r = res[name]
            lines.append(f"| {name} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} | {r['peak_rss_bytes'] / 2**20:.0f} "
                         f"({r['baseline_rss_bytes'] / 2**20:.0f}) | {r['top16_evr']:.6f} | "
                         f"{r['top16_diff_vs_float64']:.1e} | {r['evr_max_diff_vs_float64']:.1e} "
                         f"({r['components_compared']}) |")
        sp = res["speedups"]
        lines += ["", f"Speed-up (wall, best of runs): uws model axis vs the replication's recipe "
                  f"**{sp['model_axis_vs_replication']:.1f}x** (target >= 20x: "
                  f"{'met' if sp['model_axis_vs_replication'] >= 20 else 'not met'}); uws `stacked_rows_spectrum` vs "
                  f"the authors' sklearn PCA **{sp['authors_vs_sklearn']:.1f}x** (target >= 5x: "
                  f"{'met' if sp['authors_vs_sklearn'] >= 5 else 'not met'}). Top-16 EVR within {EVR_TOL:g} of the "
                  "float64 reference: " + ", ".join(f"{k} {res[k]['top16_within_tol']}" for k in TIMED) + ".", ""]
    if data.get("solvers"):
        from benchmarks.bench_eigensolvers import markdown

        lines += [f"## Eigensolvers at the real shapes ({data['solvers']['threads']}; benchmarks/bench_eigensolvers.py)",
                  "", "EVR differences are against the full float64 eigh, in units of the exact trace.", "",
                  *markdown(data["solvers"]["cases"]), ""]
    lines += ["## Targets of issue 15 on this machine (extrapolations marked)", ""]
    for tag, run in data["runs"].items():
        ex = run["extrapolation"].get("extrapolated_96_keys_s")
        limit = 180 if run["n"] <= 100 else 900
        if ex is not None and run["n"] in (100, 500) and not tag.startswith("before"):
            how = "measured" if len(run["keys"]) == 3 * PAPER_LAYERS else "extrapolated"
            lines.append(f"- `uws spectra`, 96 keys, N = {run['n']}, threads={run['threads']}: {ex / 60:.1f} min {how} "
                         f"(target < {limit // 60} min: {'met' if ex < limit else 'not met'}).")
    lines.append("- CUDA (500 LoRAs x 96 modules in under 2 minutes): " + (
        "see the run above." if data["machine"]["cuda"] else "not measured, no GPU in this run."))
    (out / "paper_shapes_results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="adapters written for `uws spectra`")
    ap.add_argument("--layers", type=int, default=2, help="layers written (of 32); 3 keys each")
    ap.add_argument("--before", type=int, default=1, help="also time the d x d path of before on 2 keys (0: skip)")
    ap.add_argument("--large-n", type=int, default=500, help="also time `uws spectra` at this N (0: skip)")
    ap.add_argument("--large-layers", type=int, default=1, help="layers written for the --large-n run")
    ap.add_argument("--peer-n", type=int, default=100, help="adapters in the peers' recipes comparison")
    ap.add_argument("--repeat", type=int, default=3, help="timings per recipe (best kept)")
    ap.add_argument("--threads", default="1,default", help="thread settings of the `uws spectra` runs and the recipes: 'default' and/or a count")
    ap.add_argument("--solvers", type=int, default=1, help="also compare the eigensolvers at the real shapes (0: skip)")
    ap.add_argument("--out", type=Path, default=HERE, help="output folder of the results")
    ap.add_argument("--worker", choices=list(RECIPES), help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker-factors", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        recipe_worker(args.worker, args.worker_factors, args.repeat, args.worker_out)
        return {}
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on shared cores
    from uws_core.linalg.numerics import unpinned_env

    # every child (uws spectra and each recipe, the peers' and ours) runs MKL's own kernels, as the uws command and
    # paper scale do: the laptop populations' pin (MKL_CBWR=COMPATIBLE) would slow the peers' torch code and ours alike
    env = {**unpinned_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="uws_paper_shapes_"))
    try:
        t0 = time.perf_counter()
        write_adapters(work / "pop", args.n, args.layers)
        write_s = time.perf_counter() - t0
        runs, envs = {}, {}
        for threads in [t.strip() for t in args.threads.split(",") if t.strip()]:
            tenv = dict(env) if threads == "default" else {**env, "OMP_NUM_THREADS": threads,
                                                           "OPENBLAS_NUM_THREADS": threads,
                                                           "MKL_NUM_THREADS": threads}
            envs[f"threads={threads}"] = tenv
            run = uws_spectra_run(work / "pop", work / f"out_{threads}", tenv)
            run.update(n=args.n, layers=args.layers, threads=threads)
            run["extrapolation"] = extrapolate(run, args.n)
            if not runs:  # first thread setting: peak RSS per shape class, one key alone
                run["peak_per_shape_class"] = {
                    m: uws_spectra_run(work / "pop", work / f"one_{m}", tenv,
                                       keys=rf"layers\.0\.self_attn\.{m}$")["peak_rss_bytes"] for m in ("q_proj", "k_proj")}
            runs[f"threads={threads}"] = run
            if args.before and threads == "1":  # same keys, same threads, the d x d path of before
                before = uws_spectra_run(work / "pop", work / "out_before", tenv, keys=r"layers\.0\.self_attn\.[qk]_proj$",
                                         dense_path=True)
                before.update(n=args.n, layers=1, threads=threads)
                before["extrapolation"] = extrapolate(before, args.n)
                runs["before (d x d path), threads=1"] = before
            print(json.dumps({"threads": threads, "wall_s": run["wall_s"], **run["extrapolation"]}), flush=True)
        if args.large_n:  # N r >= d at N = 500: the d x d path; first thread setting only (minutes per key)
            tag, tenv = next(iter(envs.items()))
            write_adapters(work / "pop_large", args.large_n, args.large_layers)
            run = uws_spectra_run(work / "pop_large", work / "out_large", tenv)
            run.update(n=args.large_n, layers=args.large_layers, threads=tag.split("=", 1)[1])
            run["extrapolation"] = extrapolate(run, args.large_n)
            runs[f"N={args.large_n}, {tag}"] = run
            shutil.rmtree(work / "pop_large", ignore_errors=True)
            print(json.dumps({"n": args.large_n, "wall_s": run["wall_s"], **run["extrapolation"]}), flush=True)
        pr = peers(args.peer_n, args.repeat, envs, work)
        solvers = None
        if args.solvers:  # eigensolver choice at the real shapes, first thread setting (benchmarks/bench_eigensolvers.py)
            tag, tenv = next(iter(envs.items()))
            run_child([sys.executable, "-m", "benchmarks.bench_eigensolvers", "--out", str(work / "solvers.json")],
                      env=tenv)
            solvers = {"threads": tag, "cases": json.loads((work / "solvers.json").read_text())}
        data = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
                "load_before": load_before, "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                "hidden": HIDDEN, "shapes": SHAPES, "write_adapters_s": write_s, "runs": runs, "peer_n": args.peer_n, "peers": pr, "solvers": solvers}
        write_results(data, args.out)
        return data
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
