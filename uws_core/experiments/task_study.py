"""The paper-scale functional studies of notebooks 04, 06 and 08: adapters written with peft, evaluated on their
Lots-of-LoRAs tasks by :mod:`uws_core.experiments.task_eval`, summarised as ROUGE-L tables with bootstrap CIs.

* :func:`functional_setup`: the base model, its revision and the task-data root the paper-scale branches need
  (``UWS_MISTRAL_BASE``, ``UWS_MISTRAL_BASE_REVISION``, ``UWS_TASK_DATA_DIR`` in the notebooks), or the sentence
  saying why the functional part cannot run;
* :func:`available_tasks`: the tasks (of the authors' IID / OOD lists) whose adapter and dataset are present;
* :func:`write_loo_variants` (notebook 08): per held-out task, the variants of
  :func:`uws_core.experiments.task_adapters.heldout_variants` (own, mean of the others, both recipes with and
  without the mean, the random-basis control, basis only), every basis fitted on the *other* adapters only;
* :func:`write_in_sample_variants` (notebook 06): the population's own adapters rebuilt from the authors' factor
  bases fitted on every adapter (in-sample, mean column added back, ``lora_projection.fit_factor_basis`` /
  ``project_factors``) at one k per module for each setting;
* :func:`evaluate_runs`: each run (a variant: task -> adapter directory, ``None`` = the base alone) on its tasks,
  resumable (``task_eval.evaluate_tasks``); :func:`rouge_table` (mean over tasks with its two-stage bootstrap CI,
  per run) and :func:`paired_table` (run a minus run b on the same examples, ``task_scores.paired_difference_ci``);
  :func:`gain_kept`: ``(run - base) / (own - base)`` of the mean ROUGE-L; :func:`format_table` prints them;
* the notebooks' studies, each returning a JSON-able dict for ``results["functional_paper"]``: :func:`loo_study`
  (08: IID and OOD groups, :func:`loo_pairs`), :func:`merge_study` (04: every merge, the individual adapters, the
  base) and :func:`compression_study` (06: ROUGE-L kept at each k / EV setting).

Memory and disk at Mistral-7B's shapes, time per task, and the commands: ``docs/paper_scale.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

__all__ = ["FunctionalSetup", "functional_setup", "available_tasks", "write_loo_variants",
           "write_in_sample_variants", "evaluate_runs", "rouge_table", "paired_table", "gain_kept", "format_table",
           "loo_pairs", "loo_study", "run_name", "MERGE_RIVALS", "merge_study", "compression_study"]


@dataclass(frozen=True)
class FunctionalSetup:
    base: str                  # Mistral-7B-Instruct-v0.2: a local directory or a hub id
    revision: str | None       # the hub commit of a hub id
    data_root: Path            # where `uws download lots_of_loras_tasks --dest` put the datasets
    decoding: str = "greedy"   # or "authors" (task_eval.DECODINGS)
    batch_size: int = 8
    limit: int | None = None   # first N test examples per task (None: all)
    quantize: str = "none"     # task_eval.Evaluator: none / 4bit / auto
    n_boot: int = 2000

    def describe(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def functional_setup(base: str | None, revision: str | None, data_root: str | Path | None,
                     **settings) -> FunctionalSetup | str:
    """The setup, or the reason (one sentence naming the missing variable or directory) it cannot run."""
    missing = [name for name, v in (("UWS_MISTRAL_BASE", base), ("UWS_TASK_DATA_DIR", data_root)) if not v]
    if missing:
        return (f"functional evaluation not run: {' and '.join(missing)} not set (the base model "
                "Mistral-7B-Instruct-v0.2 and the task datasets of `uws download lots_of_loras_tasks`; a GPU makes it "
                "practical, see docs/paper_scale.md)")
    if not Path(data_root).is_dir():
        return f"functional evaluation not run: UWS_TASK_DATA_DIR={data_root} is not a directory"
    limit = settings.get("limit")
    if isinstance(limit, str):  # from the environment (UWS_EVAL_LIMIT); "" = every example
        if limit.strip() and not limit.strip().isdigit():
            raise ValueError(f"UWS_EVAL_LIMIT must be a positive number of test examples per task, got {limit!r}")
        settings["limit"] = int(limit) if limit.strip() else None
    if settings.get("limit") is not None and settings["limit"] < 1:
        raise ValueError(f"the test examples per task (UWS_EVAL_LIMIT) must be >= 1, got {settings['limit']}")
    return FunctionalSetup(str(base), revision or None, Path(data_root), **settings)


def available_tasks(setup: FunctionalSetup, task_ids: Sequence[str], adapters: Mapping[str, Path | None] | None = None
                    ) -> tuple[dict[str, Path], list[str]]:
    """``({task: dataset directory}, [missing task ids])``: a task counts when its dataset is under the data root
    and, when ``adapters`` is given (task id -> directory, None = absent), its adapter is in it."""
    from uws_core.experiments.task_data import TaskDataError, task_data_dirs

    found, missing = {}, []
    for t in task_ids:
        if adapters is not None and adapters.get(t) is None:
            missing.append(t)
            continue
        try:
            found.update(task_data_dirs(setup.data_root, [t]))
        except TaskDataError:
            missing.append(t)
    return found, missing


def _register(runs: dict, variants: Mapping, paths: Sequence[Path], task: str) -> None:
    for name, p in zip(variants, paths):
        runs.setdefault(name, {})[task] = p


def write_loo_variants(train_dirs: Sequence[Path], train_ids: Sequence[str], heldout: Mapping[str, Path],
                       out: Path | str, ks: Sequence[int] = (16,), **variant_kw) -> dict[str, dict[str, Path]]:
    """``{variant: {task: adapter dir}}``: for each held-out task t (its adapter ``heldout[t]``), the variants of
    ``heldout_variants`` with every basis fitted on the training adapters other than t (an IID task is one of
    them and is left out; an OOD task is not among them), written under ``out/<t>/<variant>/`` (a PEFT adapter, or
    a dense delta for the high-rank ones: ``task_adapters.write_adapter_state``)."""
    from uws_core.experiments.lora_projection import LoraStack
    from uws_core.experiments.task_adapters import heldout_variants, write_variants
    from uws_core.weights.adapters import AdapterSet, read_adapter_config

    runs: dict[str, dict[str, Path]] = {}
    for t, d in heldout.items():
        keep = [i for i, name in enumerate(train_ids) if name != t]
        if len(keep) < 2:
            raise ValueError(f"held-out task {t}: need at least 2 other training adapters, found {len(keep)}")
        aset = AdapterSet.from_dirs([train_dirs[i] for i in keep] + [d], [train_ids[i] for i in keep] + [t])
        stack = LoraStack.from_adapter_set(aset)
        variants = heldout_variants(stack, len(stack) - 1, ks, **variant_kw)
        _register(runs, variants, write_variants(variants, out, t, read_adapter_config(d).raw), t)
    return runs


def write_in_sample_variants(stack, tasks: Mapping[str, int], settings: Sequence[tuple[str, Mapping[str, int]]],
                             out: Path | str, like: dict) -> dict[str, dict[str, Path]]:
    """``{run_name(setting label): {task: adapter dir}}`` in the settings' order: adapter ``tasks[t]`` of ``stack`` rebuilt from the top-k factor
    bases of all adapters of the stack (k per module from each setting), mean column added back; written under
    ``out/<task>/<run_name(label)>/``."""
    from uws_core.experiments.lora_projection import fit_factor_basis, project_factors
    from uws_core.experiments.task_adapters import write_variants
    from uws_core.weights.peft_state import join_lora_state

    pairs: dict[str, dict[str, dict]] = {label: {t: {} for t in tasks} for label, _ in settings}
    for m in stack.module_keys:
        B, A = stack.factors(m)  # (N, d_out, r), (N, r, d_in)
        basis = fit_factor_basis(B, A, max(k_of[m] for _, k_of in settings))
        for label, k_of in settings:
            for t, i in tasks.items():
                pairs[label][t][m] = project_factors(B[i], A[i], basis, k_of[m], add_mean=True)
    runs: dict[str, dict[str, Path]] = {}
    for t, i in tasks.items():
        safe = {label: run_name(label) for label, _ in settings}
        variants = {safe[label]: (join_lora_state(pairs[label][t], torch.float64), float(stack.scalings[i]))
                    for label, _ in settings}
        _register(runs, variants, write_variants(variants, out, t, like), t)
    return runs


def evaluate_runs(ev, runs: Mapping[str, Mapping[str, Path | None]], task_dirs: Mapping[str, Path],
                  out_dir: Path | str, setup: FunctionalSetup, progress: bool = True
                  ) -> tuple[dict[str, pd.DataFrame], list[dict]]:
    """Every run on its tasks with ``task_eval.evaluate_tasks`` (results under ``out_dir/<run>/``, resumable);
    returns ``({run: per-example records}, timing rows with the run name)``."""
    from uws_core.experiments.task_eval import evaluate_tasks

    records, timing = {}, []
    for run, adapters in runs.items():
        tasks = {t: task_dirs[t] for t in adapters}
        res = evaluate_tasks(ev, tasks, out_dir, run, adapter=dict(adapters), decoding=setup.decoding,
                             batch_size=setup.batch_size, limit=setup.limit, n_boot=setup.n_boot, progress=progress)
        records[run] = res["records"]
        timing += [{"run": run, **t} for t in res["timing"]]
    return records, timing


def rouge_table(records: Mapping[str, pd.DataFrame], n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per run: tasks, examples, ROUGE-L (first reference), ROUGE-L (best reference) and exact match in percent,
    each the mean over tasks of the per-task means with its 95% two-stage bootstrap CI."""
    from uws_core.experiments.task_scores import summarize

    rows = []
    for run, rec in records.items():
        s = summarize(rec, n_boot=n_boot, seed=seed).set_index("task").loc["ALL"]
        rows.append({"run": run, "tasks": int(rec["task"].nunique()), "n": int(s["n"]),
                     **{c: float(s[c]) for c in s.index if c.startswith(("rougeL", "exact_match"))}})
    return pd.DataFrame(rows)


def paired_table(records: Mapping[str, pd.DataFrame], pairs: Mapping[str, tuple[str, str]], metric: str = "rougeL",
                 n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per comparison ``name: (run a, run b)`` present in ``records``: a - b in points with its 95% CI
    (examples paired by task and id, two-stage bootstrap); comparisons with a missing run are left out."""
    from uws_core.experiments.task_scores import paired_difference_ci

    rows = []
    for name, (a, b) in pairs.items():
        if a in records and b in records:
            d, lo, hi = paired_difference_ci(records[a], records[b], metric, n_boot=n_boot, seed=seed)
            rows.append({"comparison": name, "a": a, "b": b, "metric": metric, "diff": d, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["comparison", "a", "b", "metric", "diff", "lo", "hi"])


def gain_kept(table: pd.DataFrame, run: str, base: str = "base", own: str = "own", metric: str = "rougeL") -> float:
    """``(run - base) / (own - base)`` of the mean ROUGE-L over tasks (NaN when own does not beat base)."""
    t = table.set_index("run")[metric]
    gain = t[own] - t[base]
    return float((t[run] - t[base]) / gain) if gain > 0 else float("nan")


def format_table(table: pd.DataFrame, what: str = "run") -> str:
    """One line per row: ROUGE-L and exact match with their CIs (percent), or a paired difference with its CI."""
    lines = []
    width = max([len(str(x)) for x in table[table.columns[0]]] + [4])
    for r in table.to_dict("records"):
        if "diff" in r:
            lines.append(f"{r['comparison']:{width}s} {r['diff']:+6.1f} [{r['lo']:+6.1f}, {r['hi']:+6.1f}]")
        else:
            lines.append(f"{r[what]:{width}s} ROUGE-L {r['rougeL']:5.1f} [{r['rougeL_lo']:5.1f}, {r['rougeL_hi']:5.1f}]"
                         f"  exact match {r['exact_match']:5.1f} [{r['exact_match_lo']:5.1f}, "
                         f"{r['exact_match_hi']:5.1f}]  ({r['tasks']} tasks, {r['n']} examples)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- notebook 08
def loo_pairs(k: int) -> dict[str, tuple[str, str]]:
    """Notebook 08's paired comparisons at k (run a, run b), named as its laptop-scale table names them."""
    return {"own - base": ("own", "base"), "mean of others - base": ("mean_of_others", "base"),
            "B@A: mean + proj - mean only": (f"product_mean_k{k}", "mean_of_others"),
            "B@A: no mean - base": (f"product_nomean_k{k}", "base"),
            "B@A: basis only - base": (f"basis_only_k{k}", "base"),
            "factors: fitted - random basis": (f"factors_nomean_k{k}", f"factors_random_nomean_k{k}"),
            "factors: no mean - base": (f"factors_nomean_k{k}", "base")}


def loo_study(ev, setup: FunctionalSetup, train_dirs: Sequence[Path], train_ids: Sequence[str],
              eval_adapters: Mapping[str, Mapping[str, Path | None]], out: Path | str, ks: Sequence[int] = (16,),
              progress: bool = True) -> dict:
    """Notebook 08 at paper scale: for each group (``"iid"``, ``"ood"``: task id -> its adapter directory or
    None), the held-out variants (:func:`write_loo_variants`) and the base, evaluated on the group's tasks; per
    group the ROUGE-L table, the paired differences at every k, the shares of the own gain kept, the timing."""
    out = Path(out)
    groups = {}
    for group, adapters in eval_adapters.items():
        task_dirs, missing = available_tasks(setup, list(adapters), adapters)
        g: dict = {"tasks": list(task_dirs), "missing": missing}
        if task_dirs:
            runs = write_loo_variants(train_dirs, train_ids, {t: adapters[t] for t in task_dirs},
                                      out / "adapters" / group, ks)
            runs = {"base": dict.fromkeys(task_dirs), **runs}
            records, timing = evaluate_runs(ev, runs, task_dirs, out / "eval" / group, setup, progress)
            table = rouge_table(records, setup.n_boot)
            paired = pd.concat([paired_table(records, loo_pairs(k), n_boot=setup.n_boot).assign(k=k) for k in ks],
                               ignore_index=True)
            g.update(table=table.to_dict("records"), paired=paired.to_dict("records"), timing=timing,
                     gain_kept={f"{run} k={k}": gain_kept(table, run) for k in ks
                                for run in (f"factors_nomean_k{k}", f"product_mean_k{k}")})
        groups[group] = g
    return {"setup": setup.describe(), "precision": ev.precision, "device": ev.device, "ks": list(ks),
            "groups": groups}


# ---------------------------------------------------------------------------------------------- notebooks 04, 06
def run_name(label: str) -> str:
    """A method or setting label as a run / directory name (``subspace k=16`` -> ``subspace_k16``)."""
    return label.replace(" ", "_").replace("=", "").replace("%", "pct")


MERGE_RIVALS = ("mean", "task arithmetic", "TIES", "DARE", "KnOTS-TIES")


def merge_study(ev, setup: FunctionalSetup, task_adapters: Mapping[str, Path | None], merged: Mapping[str, Path],
                out: Path | str, subspace: str = "subspace k=16", progress: bool = True) -> dict:
    """Notebook 04 at paper scale: every merged adapter (method -> directory) on every merged task whose dataset is
    present, beside each task's own adapter (``individual``) and the base. Returns the tasks, the ROUGE-L table
    (``method`` column), the paired differences of the subspace merge against each other merge, the base and the
    individual adapters, and the timing."""
    task_dirs, missing = available_tasks(setup, list(task_adapters), task_adapters)
    result: dict = {"tasks": list(task_dirs), "missing": missing, "precision": ev.precision, "device": ev.device,
                    "setup": setup.describe()}
    if not task_dirs:
        return result
    labels = {"base": None, "individual": None, **{m: d for m, d in merged.items()}}
    runs = {run_name(m): ({t: task_adapters[t] for t in task_dirs} if m == "individual"
                          else dict.fromkeys(task_dirs, d)) for m, d in labels.items()}
    records, timing = evaluate_runs(ev, runs, task_dirs, out, setup, progress)
    table = rouge_table(records, setup.n_boot)
    table.insert(0, "method", list(labels))
    s = run_name(subspace)
    pairs = {f"{subspace} - {m}": (s, run_name(m)) for m in (*MERGE_RIVALS, "base") if m in labels and m != subspace}
    pairs[f"individual - {subspace}"] = ("individual", s)
    paired = paired_table(records, pairs, n_boot=setup.n_boot)
    return {**result, "table": table.to_dict("records"), "paired": paired.to_dict("records"), "timing": timing}


def compression_study(ev, setup: FunctionalSetup, stack, task_index: Mapping[str, int],
                      settings: Sequence[tuple[str, Mapping[str, int]]], out: Path | str, like: dict,
                      progress: bool = True) -> dict:
    """Notebook 06 at paper scale: the population's adapters of the given tasks (task -> index in ``stack``) rebuilt
    at each setting (:func:`write_in_sample_variants`), their own adapters and the base, on the tasks' test splits.
    Returns the ROUGE-L table (``setting`` column, ``rougeL/own``: the quality kept, ``gain kept``:
    :func:`gain_kept`), the paired differences rebuilt - own, and the timing."""
    out, dirs = Path(out), {}
    task_dirs, missing = available_tasks(setup, list(task_index))  # the adapters are in the stack: data needed only
    result: dict = {"tasks": list(task_dirs), "missing": missing, "precision": ev.precision, "device": ev.device,
                    "setup": setup.describe()}
    if not task_dirs:
        return result
    idx = {t: task_index[t] for t in task_dirs}
    rebuilt = write_in_sample_variants(stack, idx, settings, out / "adapters", like)
    from uws_core.experiments.task_adapters import write_variants

    for t, i in idx.items():  # the adapter itself, rewritten as the rebuilt ones are (float32, one rank)
        dirs[t] = write_variants({"own": (stack.state(i), float(stack.scalings[i]))}, out / "adapters", t, like)[0]
    runs = {"base": dict.fromkeys(task_dirs), "own": {t: dirs[t] for t in task_dirs}, **rebuilt}
    records, timing = evaluate_runs(ev, runs, task_dirs, out / "eval", setup, progress)
    table = rouge_table(records, setup.n_boot)
    table.insert(0, "setting", ["base", "own"] + [label for label, _ in settings])
    own_score = table.set_index("run").at["own", "rougeL"]
    table["rougeL/own"] = table["rougeL"] / own_score if own_score > 0 else float("nan")
    table["gain kept"] = [gain_kept(table, r) for r in table["run"]]
    paired = paired_table(records, {f"{label} - own": (r, "own") for label, r in zip([s for s, _ in settings],
                                                                                      list(rebuilt))},
                          n_boot=setup.n_boot)
    return {**result, "table": table.to_dict("records"), "paired": paired.to_dict("records"), "timing": timing}
