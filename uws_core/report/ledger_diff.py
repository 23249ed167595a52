"""Two runs' claims ledgers side by side: does every verdict come out the same on other bits?

``make native-check`` builds the laptop populations a second time without the numerics pin
(``UWS_NATIVE_KERNELS=1``: this CPU's own kernels, so other weights, as on another machine), runs nbval on the
notebooks against them with their results in ``results/native/``, and then calls
``python -m uws_core.report.ledger_diff results results/native``: one row per claim of
:data:`uws_core.report.claims.CLAIMS` with both runs' verdicts and both runs' ``ours`` text, judged by the same
:func:`uws_core.report.claims.ledger` from each directory's result files. Exit status 1 when a verdict differs or
a directory has no result files, so the check can fail.

A second table sets every seed summary the notebooks wrote (:func:`uws_core.report.seeds.spread`: mean, min and
max over the population seeds) beside the other run's, and marks the quantities whose seed means differ by more than
the wider of the two seed ranges: numbers that the seeds' spread does not cover (informative; only verdicts fail).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from uws_core.report import claims

__all__ = ["VerdictPair", "SpreadPair", "compare_ledgers", "seed_spreads", "compare_seed_spreads", "render",
           "render_spreads", "main"]

SPREAD_KEYS = {"n", "mean", "sd", "min", "max", "values"}


@dataclass(frozen=True)
class VerdictPair:
    claim: str
    verdict_a: str
    verdict_b: str
    ours_a: str
    ours_b: str

    @property
    def same(self) -> bool:
        return self.verdict_a == self.verdict_b


def compare_ledgers(dir_a: Path | str, dir_b: Path | str) -> list[VerdictPair]:
    """The ledger of each results directory (:func:`uws_core.report.claims.ledger` of its result files), claim by
    claim. Raises FileNotFoundError naming the directory when one has no ``NN_*.json`` result file (an empty run
    would otherwise compare as "not run" on both sides and pass)."""
    ledgers = []
    for d in (Path(dir_a), Path(dir_b)):
        results = claims.load_all(d)
        if not results:
            raise FileNotFoundError(f"{d}: no notebook result files (NN_*.json) to build a ledger from")
        ledgers.append(claims.ledger(results))
    return [VerdictPair(a.claim, a.verdict, b.verdict, a.ours, b.ours) for a, b in zip(*ledgers)]


@dataclass(frozen=True)
class SpreadPair:
    quantity: str      # "<notebook stem>: <path of keys>/<finding>"
    a: dict            # seeds.spread() of one run
    b: dict            # ... of the other

    @property
    def beyond_seed_range(self) -> bool:
        """The seed means differ by more than the wider of the two runs' seed ranges (max - min)."""
        width = max(self.a["max"] - self.a["min"], self.b["max"] - self.b["min"])
        return abs(self.a["mean"] - self.b["mean"]) > width


def seed_spreads(results: dict, prefix: str = "") -> dict[str, dict]:
    """Every seed summary (a dict with exactly the keys of :func:`uws_core.report.seeds.spread`) inside one notebook's
    ``results``, found at any depth, by its path of keys joined with "/"."""
    out = {}
    for key, value in results.items():
        if isinstance(value, dict) and set(value) == SPREAD_KEYS:
            out[prefix + str(key)] = value
        elif isinstance(value, dict):
            out.update(seed_spreads(value, f"{prefix}{key}/"))
    return out


def compare_seed_spreads(dir_a: Path | str, dir_b: Path | str) -> list[SpreadPair]:
    """The seed summaries that both directories' result files hold (same notebook, same path), in file order."""
    ra, rb = claims.load_all(dir_a), claims.load_all(dir_b)
    pairs = []
    for stem in sorted(set(ra) & set(rb)):
        sa, sb = seed_spreads(ra[stem].get("results", {})), seed_spreads(rb[stem].get("results", {}))
        pairs += [SpreadPair(f"{stem}: {path}", sa[path], sb[path]) for path in sa if path in sb]
    return pairs


def render(pairs: list[VerdictPair], name_a: str, name_b: str) -> str:
    """A markdown table: claim, both verdicts, same or DIFFERS, then both runs' numbers."""
    cell = lambda s: str(s).replace("|", "/").replace("\n", " ")  # noqa: E731
    lines = [f"| claim | {name_a} | {name_b} | verdict | ours ({name_a}) | ours ({name_b}) |", "|---|---|---|---|---|---|"]
    lines += [f"| {cell(p.claim)} | {p.verdict_a} | {p.verdict_b} | {'same' if p.same else 'DIFFERS'} | "
              f"{cell(p.ours_a)} | {cell(p.ours_b)} |" for p in pairs]
    n_diff = sum(not p.same for p in pairs)
    lines += ["", f"{len(pairs) - n_diff} of {len(pairs)} verdicts the same" + (f"; {n_diff} differ" if n_diff else "")]
    return "\n".join(lines) + "\n"


def render_spreads(pairs: list[SpreadPair], name_a: str, name_b: str) -> str:
    """A markdown table: quantity, each run's seed mean (min-max, n), and whether the means differ by more than the
    wider seed range."""
    fmt = lambda s: f"{s['mean']:.4g} ({s['min']:.4g} to {s['max']:.4g}, n={s['n']})"  # noqa: E731
    lines = [f"| quantity | {name_a}: seed mean (range) | {name_b}: seed mean (range) | apart by more than the seed range |",
             "|---|---|---|---|"]
    lines += [f"| {p.quantity} | {fmt(p.a)} | {fmt(p.b)} | {'yes' if p.beyond_seed_range else 'no'} |" for p in pairs]
    n = sum(p.beyond_seed_range for p in pairs)
    lines += ["", f"{n} of {len(pairs)} seed means apart by more than their seed range"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uws_core.report.ledger_diff",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="a results directory (e.g. results)")
    parser.add_argument("b", help="another results directory (e.g. results/native)")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        pairs = compare_ledgers(args.a, args.b)
    except FileNotFoundError as err:
        print(f"error: {err}")
        return 1
    text = render(pairs, args.a, args.b) + "\n" + render_spreads(compare_seed_spreads(args.a, args.b), args.a, args.b)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0 if all(p.same for p in pairs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
