"""``uws report DIR``: a page a reviewer can read for a ``uws spectra`` output directory, no code needed.

Input: the directory that :func:`uws_core.weights.population_spectra.population_spectra` (or the kohya path,
:func:`uws_core.weights.kohya.kohya_population_spectra`) writes: ``run.json`` (settings), ``keys/<key>.json`` (one per
finished key) and, once the run has ended, ``spectra.json``. An interrupted run (no ``spectra.json``) is
reported from ``run.json`` and the keys written so far, and the page says so.

Output, in DIR: ``report.md``, ``report.html`` (the same text rendered by mistune, images inline by relative
path) and ``report_figures/<module>.png``:

* the run's settings (kind, unfolding, centring, N, models) and the recipe they amount to (a ``recipe``
  field of ``run.json`` is printed as written when a run records one);
* a table per key and spectrum (``weight`` for checkpoints; ``lora_A``, ``lora_B``, ``product`` for LoRA
  adapters): shape, N, top-k cumulative EVR for the run's ks, the k reaching 50/80/90/95/99% of the
  variance, and the null's k at 90%;
* per module type, scree (EVR per component, log scale) and cumulative EVR, mean +- one std over the
  layers of that module type, with the null beside it as a dashed band.

The null is the Marchenko-Pastur law (:func:`uws_core.linalg.nulls.marchenko_pastur_spectrum`): the expected
spectrum of i.i.d. Gaussian data with the same unfolded shape, computed from the shapes alone (the report
reads JSON only, never a weight):

* weights and LoRA factors: an unfolding of ``(n_samples, n_features)`` = rows ``(N d_out, d_in)``, cols
  ``(N d_in, d_out)``, model ``(N, d_out d_in)``, less the degrees of freedom the centring removes
  (``models``: one matrix, i.e. ``d_out`` rows or ``d_in`` columns; ``samples`` and the model axis: one
  sample); kohya LoRAs of mixed ranks record their factors stacked, ``(sum r_i, d_in)`` and ``(sum r_i, d_out)``,
  one sample per row less the mean row;
* LoRA products ``s_i B_i A_i`` of rank r: for rows, ``sum_i P_i^T P_i = sum_i A_i^T (B_i^T B_i) A_i``, and
  for Gaussian ``B_i`` with ``d_out >> r``, ``B_i^T B_i`` is close to a multiple of ``I_r``, so the null is
  MP with ``N r`` samples (``sum_i r_i`` for kohya LoRAs of mixed ranks; the mean matrix keeps that span,
  the mean sample removes one) of dimension ``d_in`` (cols: ``d_out``), an approximation that the page states. It is the analytic counterpart of
  :func:`uws_core.linalg.nulls.gaussian_lora_like` (the replication's sampled null).
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from uws_core.weights.adapters import parse_module_key
from uws_core.linalg.nulls import marchenko_pastur_spectrum

__all__ = ["ReportInputError", "load_run", "null_evr", "k_at", "write_report", "spectrum_table_rows", "spectrum_table"]

log = logging.getLogger(__name__)

THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99)
PLOT_COMPONENTS = 64  # components drawn per panel (the head the paper's figures show)
FIGURES = "report_figures"


class ReportInputError(ValueError):
    """DIR is not a readable ``uws spectra`` output directory."""


def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text())
    except OSError as exc:
        raise ReportInputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise ReportInputError(f"{path}: the {what} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ReportInputError(f"{path}: the {what} is not a JSON object")
    return obj


def load_run(directory: Path | str) -> dict:
    """``{"settings", "keys": {key: result}, "complete": bool, "summary"}`` of a ``uws spectra`` directory.

    Keys come from ``spectra.json`` when the run ended, else from ``keys/*.json`` (an interrupted run)."""
    d = Path(directory)
    if not d.is_dir():
        raise ReportInputError(f"{d} is not a directory")
    if not (d / "run.json").is_file():
        raise ReportInputError(f"{d} holds no run.json: not a `uws spectra` output directory")
    settings = _read_json(d / "run.json", "run settings")
    if settings.get("format") != "uws-population-spectra":
        raise ReportInputError(f"{d / 'run.json'}: format {settings.get('format')!r}, expected 'uws-population-spectra'")
    summary, complete = {}, (d / "spectra.json").is_file()
    if complete:
        summary = _read_json(d / "spectra.json", "run summary")
        keys = summary.get("keys", {})
    else:
        keys = {}
        for path in sorted((d / "keys").glob("*.json")):
            res = _read_json(path, "key result")
            keys[res.get("key", path.stem)] = res
    for key, res in keys.items():
        if not isinstance(res.get("spectra"), dict) or not res["spectra"]:
            raise ReportInputError(f"{d}: key {key!r} has no spectra")
        for name, spec in res["spectra"].items():
            if not isinstance(spec.get("evr"), list) or "N" not in spec or "shape" not in spec:
                raise ReportInputError(f"{d}: key {key!r}, spectrum {name!r} lacks evr, N or shape")
    if not keys:
        raise ReportInputError(f"{d}: no key has been computed yet (keys/ is empty)")
    return {"settings": settings, "keys": keys, "complete": complete, "summary": summary}


def null_samples_features(spec: dict, name: str, rank: int | None = None,
                          stacked: bool = False) -> tuple[int, int] | None:
    """(n_samples, n_features) of the Marchenko-Pastur null of one spectrum (module docstring), None if empty.

    ``spec``: a ``summarize`` dict (``unfolding``, ``center``, ``N``, ``shape`` = (d_out, d_in) of one matrix);
    ``rank``: the summed LoRA rank over the models for a ``product`` spectrum (None otherwise); ``stacked``:
    ``shape`` is already the stacked (samples, features) matrix (kohya LoRA factors of mixed ranks:
    (sum r_i, d_in) for A, (sum r_i, d_out) for B, :func:`uws_core.weights.kohya.kohya_key_spectra`)."""
    n, (d_out, d_in) = int(spec["N"]), (int(spec["shape"][0]), int(spec["shape"][1]))
    unfolding, center = spec["unfolding"], spec["center"]
    if stacked:
        samples, features = d_out - (center != "none"), d_in
    elif unfolding == "model":
        samples, features = n - (center != "none"), d_out * d_in
    elif name == "product" and rank is not None:
        # N rank-r products span N r directions (the sum of ranks); subtracting the mean matrix keeps that
        # span (the centred stack still has rank N r when d_out, d_in >= N r), the mean sample removes one
        samples = rank - (center == "samples")
        features = d_in if unfolding == "rows" else d_out
    else:
        rows_per, features = (d_out, d_in) if unfolding == "rows" else (d_in, d_out)
        samples = n * rows_per - {"none": 0, "models": rows_per, "samples": 1}[center]
    return (samples, features) if samples > 0 and features > 0 else None


def null_evr(spec: dict, name: str, rank: int | None = None, stacked: bool = False) -> np.ndarray | None:
    """EVR of the Marchenko-Pastur null of one spectrum (descending, sums to 1), None when it has no sample."""
    sf = null_samples_features(spec, name, rank, stacked)
    if sf is None:
        return None
    ev = marchenko_pastur_spectrum(*sf)
    return ev / ev.sum()


def k_at(evr: np.ndarray, threshold: float) -> int | None:
    """Smallest k whose cumulative EVR reaches ``threshold`` (None when the EVR given does not reach it)."""
    cum = np.cumsum(evr)
    hit = np.nonzero(cum >= threshold - 1e-12)[0]
    return int(hit[0]) + 1 if len(hit) else None


def _rank_total(res: dict) -> int | None:
    if "ranks" in res:
        return int(sum(res["ranks"]))
    if "rank" in res:
        return int(res["rank"]) * int(res["N"])
    return None


def _key_null(res: dict, name: str) -> np.ndarray | None:
    """The null of spectrum ``name`` of one key's result (the product gets the summed rank; kohya factors are
    recorded stacked)."""
    return null_evr(res["spectra"][name], name, _rank_total(res) if name == "product" else None,
                    stacked="ranks" in res and name != "product")


def _module(key: str, res: dict) -> str:
    module = res.get("module") or parse_module_key(key)[1]
    stack = res.get("stack")
    return f"{stack}.{module}" if stack else module


def spectrum_table_rows(run: dict) -> list[dict]:
    """One row per (key, spectrum): key, spectrum, shape, N, top-k EVR per k, k at each threshold, null k at 90%."""
    ks = [int(k) for k in run["settings"].get("ks", (1, 4, 16, 32, 64))]
    rows = []
    for key, res in run["keys"].items():
        for name, spec in res["spectra"].items():
            top = spec.get("top_evr", {})
            k_thr = spec.get("k_at", {})
            nul = _key_null(res, name)
            rows.append({"key": key, "module": _module(key, res), "spectrum": name,
                         "shape": "x".join(str(s) for s in spec["shape"]), "N": spec["N"],
                         "top_evr": {k: top.get(str(k)) for k in ks},
                         "k_at": {t: k_thr.get(str(t)) for t in THRESHOLDS},
                         "null_k90": None if nul is None else k_at(nul, 0.9)})
    return rows


def recipe_text(settings: dict) -> str:
    """What the settings amount to, in words (and the run's own ``recipe`` field when it records one)."""
    kind, unf, cen = settings.get("kind"), settings.get("unfolding"), settings.get("center")
    unf_words = {"rows": "rows unfolding (N d_out, d_in): basis in the input space",
                 "cols": "cols unfolding (N d_in, d_out): basis in the output space",
                 "model": "model axis (N, d_out d_in): one sample per model"}.get(unf, str(unf))
    cen_words = {"models": "the mean matrix over models subtracted", "samples": "the mean sample subtracted",
                 "none": "no centring"}.get(cen, str(cen))
    if kind == "adapters":
        text = ("LoRA adapters, the authors' recipe for the factors: A stacked as rows and B as columns, each "
                f"centred by its mean sample; the weight updates s_i B_i A_i (s_i = alpha / r) by the {unf_words}, "
                f"{cen_words}, computed in factored form.")
    elif kind == "kohya":
        text = ("kohya LoRAs of mixed ranks: A rows and B columns centred by the mean sample; the scaled products "
                "on the model axis, in factored form.")
    else:
        text = f"Full checkpoints: every weight key's stack (N, d_out, d_in), {unf_words}, {cen_words}."
    text += " Decomposition: a plain truncated SVD of that one unfolding (via its float64 Gram), not HOSVD."
    if settings.get("recipe"):
        text = f"Recipe recorded by the run: {settings['recipe']}. " + text
    return text


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _figure(module: str, entries: list[tuple[str, dict, dict]], out: Path, settings: dict) -> Path:
    """Scree (log) and cumulative EVR per spectrum of one module type, trained band beside the MP null."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uws_core.report.plots import evr_band

    by_name = defaultdict(list)  # spectrum name -> [(evr, null evr)]
    for key, res, _ in entries:
        for name, spec in res["spectra"].items():
            by_name[name].append((np.asarray(spec["evr"], float), _key_null(res, name)))
    names = list(by_name)
    fig, axes = plt.subplots(len(names), 2, figsize=(8.4, 2.9 * len(names)), squeeze=False)
    handles = []
    for row, name in zip(axes, names):
        evrs = [e for e, _ in by_name[name]]
        nulls = [n for _, n in by_name[name] if n is not None]
        spec0 = entries[0][1]["spectra"][name]
        n_comp = min(PLOT_COMPONENTS, max(len(e) for e in evrs))
        for ax, cumulative in zip(row, (False, True)):
            h = [evr_band(ax, evrs, "trained (mean ± std over layers)", "C0", n_comp, cumulative)]
            if nulls:
                h.append(evr_band(ax, nulls, "Marchenko-Pastur null, same shape", "0.45", n_comp, cumulative,
                                  linestyle="--"))
            if cumulative:
                ax.set_ylim(0, 1.02)
            else:  # components below 1e-6 of the first are round-off of a rank-deficient unfolding: off the axis
                ax.set_yscale("log")
                top = max(float(np.max(e[:n_comp])) for e in evrs)
                ax.set_ylim(top * 1e-6, top * 2)
            ax.set_title(f"{module} {name}: {spec0['unfolding']} unfolding, centre {spec0['center']}\n"
                         f"N={spec0['N']}, matrix {spec0['shape'][0]}x{spec0['shape'][1]}, "
                         f"{len(evrs)} layer(s){', cumulative' if cumulative else ', log scale'}", fontsize=8)
            handles = handles or h
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.06 / len(names), 1, 1))
    path = out / FIGURES / (re.sub(r"[^A-Za-z0-9_.\-]", "_", module) + ".png")
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_markdown(run: dict, figures: dict[str, Path], directory: Path) -> str:
    """The page's markdown (figures by path relative to ``directory``)."""
    s, summary = run["settings"], run["summary"]
    ks = [int(k) for k in s.get("ks", (1, 4, 16, 32, 64))]
    models = s.get("models", [])
    lines = [f"# Spectra report: `{directory.name}`", ""]
    if not run["complete"]:
        lines += ["**The run has not finished** (no spectra.json): this page shows the "
                  f"{len(run['keys'])} keys written so far. Rerun `uws spectra ... --resume` to complete it.", ""]
    lines += ["## Run", "", "| setting | value |", "|---|---|",
              f"| kind | {s.get('kind')} |", f"| unfolding | {s.get('unfolding')} |", f"| centring | {s.get('center')} |",
              f"| models (N) | {len(models)} |", f"| keys in this report | {len(run['keys'])} |",
              f"| top-k reported | {', '.join(map(str, ks))} |",
              f"| thresholds | {', '.join(f'{t:g}' for t in s.get('thresholds', THRESHOLDS))} |"]
    if summary:
        lines += [f"| device | {summary.get('device', '-')} |",
                  f"| computed / resumed | {len(summary.get('computed', []))} / {len(summary.get('resumed', []))} |"]
        if summary.get("too_big"):
            lines.append(f"| skipped (memory bound) | {', '.join(summary['too_big'])} |")
    shown = ", ".join(f"`{m}`" for m in models[:8]) + (f" and {len(models) - 8} more" if len(models) > 8 else "")
    lines += ["", f"Models: {shown}", "", "## Recipe", "", recipe_text(s), "",
              "Null: the Marchenko-Pastur spectrum of i.i.d. Gaussian data with the same unfolded shape "
              "(samples x features, less what the centring removes); for LoRA products, N r samples "
              "(rank-r products, an approximation for d_out, d_in >> r). Computed from the shapes, not sampled.", ""]
    lines += ["## Figures", ""]
    for module, path in figures.items():
        lines += [f"### {module}", "", f"![{module}: scree and cumulative EVR with the null]"
                                        f"({path.relative_to(directory).as_posix()})", ""]
    lines += ["## Table", "", "Top-k: cumulative EVR of the first k components. k@p: components needed for a "
              "fraction p of the variance (- : not reached within the stored EVR head). null k@0.9: the same for "
              "the null.", ""]
    head = (["key", "spectrum", "shape", "N"] + [f"top-{k}" for k in ks] + [f"k@{t:g}" for t in THRESHOLDS]
            + ["null k@0.9"])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in spectrum_table_rows(run):
        cells = ([f"`{r['key']}`", r["spectrum"], r["shape"], str(r["N"])]
                 + [_fmt(r["top_evr"][k]) for k in ks] + [_fmt(r["k_at"][t]) for t in THRESHOLDS]
                 + [_fmt(r["null_k90"])])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_to_html(text: str, title: str) -> str:
    """A standalone HTML page of ``text`` (mistune, tables on)."""
    import mistune

    body = mistune.create_markdown(plugins=["table"])(text)
    style = ("body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;line-height:1.4}"
             "table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ccc;padding:.2rem .45rem;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "code{font-size:.85em}")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


def write_report(directory: Path | str) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and ``report_figures/*.png`` into ``directory``; returns the two pages."""
    d = Path(directory)
    run = load_run(d)
    groups = defaultdict(list)
    for key, res in run["keys"].items():
        groups[_module(key, res)].append((key, res, None))
    figures = {}
    for module, entries in sorted(groups.items()):
        names = {tuple(res["spectra"]) for _, res, _ in entries}
        if len(names) > 1:  # mixed spectra in one module type cannot share a panel grid
            raise ReportInputError(f"{d}: module {module!r} mixes spectra {sorted(names)}")
        figures[module] = _figure(module, entries, d, run["settings"])
    text = report_markdown(run, figures, d)
    md, page = d / "report.md", d / "report.html"
    md.write_text(text)
    page.write_text(markdown_to_html(text, f"Spectra report: {d.name}"))
    return md, page


def spectrum_table(result: dict) -> str:
    """A short terminal table of a ``uws spectrum`` result: one line per module type and spectrum, with the
    number of keys, the matrix shape, the mean over those keys of the top-k cumulative EVR and of the k
    reaching 50/90/99% of the variance."""
    groups: dict[tuple, list] = {}
    for key, res in result["keys"].items():
        # a key's result is one spectrum (checkpoints) or several named ones (adapters: lora_A, lora_B, product,
        # or the spectra of a named recipe)
        named = {n: s for n, s in res.items() if isinstance(s, dict) and "k_at" in s and "top_k_evr" in s}
        for name, spec in (named.items() if "k_at" not in res else [("weight", res)]):
            groups.setdefault((res.get("module", key), name), []).append(spec)
    k = result["k"]
    head = ["module", "spectrum", "keys", "shape", f"top-{k} EVR", "k@50%", "k@90%", "k@99%"]
    rows = []
    for (module, name), specs in groups.items():
        shapes = sorted({"x".join(map(str, s["shape"])) for s in specs})
        rows.append([module, name, str(len(specs)), shapes[0] if len(shapes) == 1 else f"{len(shapes)} shapes",
                     f"{np.mean([s['top_k_evr'] for s in specs]):.3f}"]
                    + [f"{np.mean([s['k_at'][t] for s in specs]):.1f}" for t in ("0.5", "0.9", "0.99")])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    how = (f"recipe {result['recipe']}" if result.get("recipe")
           else f"{result['unfolding']} unfolding, centre {result['center']}")
    title = f"{how}, N={result['n_models']} {result['source']} (means over the keys of each module type)"
    return "\n".join([title, fmt(head), *map(fmt, rows)]) + "\n"
