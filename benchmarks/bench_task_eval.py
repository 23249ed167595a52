"""Benchmark: time and memory of ``uws evaluate`` per task on tiny Mistral-architecture models.

Builds the tiny bases of the tests (``tests/experiments/task_fixtures.py``: a MistralForCausalLM with a trained
byte-pair ``tokenizer.json``, 2 layers, hidden 32 and 256), a rank-4 q/k/v adapter for each and one task of 32
test examples in the Lots-of-LoRAs schema, then runs :func:`uws_core.experiments.task_eval.evaluate_tasks` with
greedy and the authors' decoding (4 beams), batch 8, after one warm-up batch, and reports what ``run.json`` records: seconds, examples
and new tokens per second, the process's peak resident memory. These are CPU rates of tiny models on the machine
that runs it: they test the path and its overheads, not a GPU's speed on Mistral-7B.

Run ``python -m benchmarks.bench_task_eval`` (about a minute on 2 shared cores); writes
``task_eval_results.json`` next to this file (or to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(out: Path, hiddens=(32, 256), n_test: int = 32) -> dict:
    sys.path.insert(0, str(HERE.parent / "tests" / "experiments"))
    from task_fixtures import write_task_dataset, write_tiny_adapter, write_tiny_base

    from uws_core.experiments.task_eval import DECODINGS, Evaluator, evaluate_tasks

    res = {"rss_before_models_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        data = write_task_dataset(d / "task280_toy", "task280_toy", n_test=n_test)
        for hidden in hiddens:
            base = write_tiny_base(d / f"base{hidden}", ("task280_toy",), hidden=hidden)
            adapter = write_tiny_adapter(base, d / f"adapter{hidden}", seed=1)
            ev = Evaluator(base)
            n_params = sum(p.numel() for p in ev.model.parameters())
            ev.use_adapter(adapter)
            for decoding in ("greedy", "authors"):
                ev.generate(["Input: warm up. Output:"] * 8, DECODINGS[decoding])  # first calls pay one-off costs
                t0 = time.perf_counter()
                r = evaluate_tasks(ev, {"task280_toy": data}, d / "out", f"h{hidden}_{decoding}", adapter=adapter,
                                   decoding=decoding, batch_size=8, progress=False)
                res["runs"].append({"hidden": hidden, "params": n_params, "decoding": decoding,
                                    "precision": ev.precision, **r["timing"][0],
                                    "wall_with_scoring_s": round(time.perf_counter() - t0, 3)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "task_eval_results.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_task_eval")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--quick", action="store_true", help="one tiny model, 4 examples")
    a = p.parse_args(argv)
    res = run(a.out, (32,) if a.quick else (32, 256), 4 if a.quick else 32)
    for r in res["runs"]:
        print(f"hidden {r['hidden']} ({r['params']} params, {r['precision']}), {r['decoding']}: "
              f"{r['examples_per_s']} examples/s, {r['new_tokens_per_s']} new tokens/s, "
              f"peak RSS {r['peak_memory_bytes'] / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
