"""The 27 operations of the laptop instruction tasks (:mod:`uws_core.zoo.tasks`) and their input and output formats.

An operation samples a payload (a tuple of characters, or a pair of them) and maps it, with the task's
parameter, to an answer of one kind ("seq", "char", "int", "bool"); :func:`format_input` and
:func:`format_output` render payloads and answers in each format; :func:`exact_match` is the tasks' metric.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Callable

__all__ = ["Operation", "OPERATIONS", "INPUT_FORMATS", "OUTPUT_FORMATS", "format_input", "format_output",
           "exact_match"]

# ---------------------------------------------------------------------------------------------- operations
DIG, LET = string.digits, string.ascii_lowercase


def _seq(rng, alphabet, lo, hi):
    return tuple(str(c) for c in rng.choice(list(alphabet), size=int(rng.integers(lo, hi + 1))))


def _num(rng, lo=0, hi=99):
    return tuple(str(int(rng.integers(lo, hi + 1))))


def _balanced(pred, gen):
    """Sampler that draws the class first (50/50) and rejects until the predicate agrees."""
    def sample(rng, param):
        want = bool(rng.random() < 0.5)
        while True:
            p = gen(rng, param, want)
            if pred(p, param) == want:
                return p
    return sample


def _majority(p, _):
    counts = sorted(((p.count(c), c) for c in set(p)), reverse=True)
    return counts[0][1]


def _maj_sample(rng, _):
    while True:
        p = _seq(rng, "abcd", 5, 7)
        counts = sorted((p.count(c) for c in set(p)), reverse=True)
        if len(counts) == 1 or counts[0] > counts[1]:
            return p


def _palin_gen(rng, _, want):
    half = _seq(rng, LET[:8], 1, 2)
    if want:
        return half + (_seq(rng, LET[:8], 1, 1) if rng.random() < 0.5 else ()) + half[::-1]
    return _seq(rng, LET[:8], 3, 5)


def _sorted_gen(rng, _, want):
    p = _seq(rng, DIG, 3, 5)
    return tuple(sorted(p)) if want else p


def _mixed(rng, _):
    while True:
        p = _seq(rng, DIG + LET[:10], 4, 6)
        if any(c.isdigit() for c in p) and any(c.isalpha() for c in p):
            return p


def _two_nums(rng, _, ordered=False):
    a, b = int(rng.integers(0, 100)), int(rng.integers(0, 100))
    if ordered and a < b:
        a, b = b, a
    return tuple(str(a)), tuple(str(b))


def _greater_sample(rng, _):
    while True:
        a, b = _two_nums(rng, None)
        if a != b:
            return a, b


def _zip_sample(rng, _):
    n = int(rng.integers(2, 4))
    return _seq(rng, LET, n, n), _seq(rng, DIG, n, n)


@dataclass(frozen=True)
class Operation:
    """One operation: a payload sampler and the function from payload (and task parameter) to answer.

    ``kind`` is the answer type ("seq", "char", "int" or "bool"); ``arity`` 2 means the payload is a pair
    of character tuples; ``params`` are the values of the task parameter (``{p}`` in ``instruction``).
    """

    name: str
    instruction: str
    kind: str
    sample: Callable
    apply: Callable
    arity: int = 1
    params: tuple = (None,)


OPERATIONS: dict[str, Operation] = {o.name: o for o in [
    Operation("reverse", "reverse", "seq", lambda r, _: _seq(r, LET, 3, 6), lambda p, _: p[::-1]),
    Operation("sort_asc", "sort up", "seq", lambda r, _: _seq(r, DIG, 3, 6), lambda p, _: tuple(sorted(p))),
    Operation("sort_desc", "sort down", "seq", lambda r, _: _seq(r, DIG, 3, 6),
        lambda p, _: tuple(sorted(p, reverse=True))),
    Operation("dedupe", "dedupe", "seq", lambda r, _: _seq(r, LET[:6], 4, 6), lambda p, _: tuple(dict.fromkeys(p))),
    Operation("every_second", "odd places", "seq", lambda r, _: _seq(r, LET, 3, 6), lambda p, _: p[::2]),
    Operation("rotate", "rotate", "seq", lambda r, _: _seq(r, LET, 3, 6), lambda p, _: p[1:] + p[:1]),
    Operation("caesar", "shift {p}", "seq", lambda r, _: _seq(r, LET, 3, 5),
        lambda p, k: tuple(LET[(LET.index(c) + int(k)) % 26] for c in p), params=("1", "2", "3")),
    Operation("digits_of", "digits", "seq", _mixed, lambda p, _: tuple(c for c in p if c.isdigit())),
    Operation("letters_of", "letters", "seq", _mixed, lambda p, _: tuple(c for c in p if c.isalpha())),
    Operation("interleave", "zip", "seq", _zip_sample, lambda p, _: tuple(c for ab in zip(*p) for c in ab), arity=2),
    Operation("first", "first", "char", lambda r, _: _seq(r, LET, 3, 6), lambda p, _: p[0]),
    Operation("last", "last", "char", lambda r, _: _seq(r, LET, 3, 6), lambda p, _: p[-1]),
    Operation("nth", "item {p}", "char", lambda r, _: _seq(r, LET, 3, 6), lambda p, n: p[int(n) - 1],
        params=("2", "3")),
    Operation("majority", "majority", "char", _maj_sample, _majority),
    Operation("length", "length", "int", lambda r, _: _seq(r, LET, 1, 8), lambda p, _: len(p)),
    Operation("count", "count {p}", "int", lambda r, _: _seq(r, LET[:4], 3, 7), lambda p, c: p.count(c),
        params=("a", "b", "c")),
    Operation("max_digit", "max", "int", lambda r, _: _seq(r, DIG, 3, 6), lambda p, _: max(int(c) for c in p)),
    Operation("min_digit", "min", "int", lambda r, _: _seq(r, DIG, 3, 6), lambda p, _: min(int(c) for c in p)),
    Operation("sum_mod10", "sum mod 10", "int", lambda r, _: _seq(r, DIG, 2, 3),
        lambda p, _: sum(int(c) for c in p) % 10),
    Operation("add", "add", "int", lambda r, _: _two_nums(r, _),
        lambda p, _: int("".join(p[0])) + int("".join(p[1])), arity=2),
    Operation("subtract", "subtract", "int", lambda r, _: _two_nums(r, _, ordered=True),
        lambda p, _: int("".join(p[0])) - int("".join(p[1])), arity=2),
    Operation("is_even", "even?", "bool", lambda r, _: _num(r, 0, 9999), lambda p, _: int(p[-1]) % 2 == 0),
    Operation("palindrome", "palindrome?", "bool", _balanced(lambda p, _: p == p[::-1], _palin_gen),
        lambda p, _: p == p[::-1]),
    Operation("greater", "greater?", "bool", _greater_sample,
        lambda p, _: int("".join(p[0])) > int("".join(p[1])), arity=2),
    Operation("is_sorted", "sorted?", "bool", _balanced(lambda p, _: list(p) == sorted(p), _sorted_gen),
        lambda p, _: list(p) == sorted(p)),
    Operation("contains", "has {p}", "bool",
        _balanced(lambda p, c: c in p, lambda r, c, w: _seq(r, DIG, 3, 5)), lambda p, c: c in p,
        params=("1", "5", "7")),
    Operation("has_repeat", "repeats?", "bool",
        _balanced(lambda p, _: len(set(p)) < len(p), lambda r, _, w: _seq(r, LET[:8], 3, 5)),
        lambda p, _: len(set(p)) < len(p)),
]}

# ---------------------------------------------------------------------------------------------- formats
INPUT_FORMATS = ("plain", "comma", "bracket", "kv")
OUTPUT_FORMATS = {"seq": ("str", "csv", "brk"), "char": ("chr", "up", "idx"),
                  "int": ("dec", "abc"), "bool": ("yn", "10", "tf")}


def format_input(payload, arity: int, fmt: str) -> str:
    """Render a payload (tuple of chars, or a pair of them for arity 2) in one input format."""
    parts = payload if arity == 2 else (payload,)
    if fmt == "plain":
        return " ".join("".join(p) for p in parts)
    if fmt == "comma":
        return ";".join(",".join(p) for p in parts)
    if fmt == "bracket":
        return "".join("[" + " ".join(p) + "]" for p in parts)
    if fmt == "kv":
        return " ".join(f"{k}={''.join(p)}" for k, p in zip("xy", parts))
    raise ValueError(f"unknown input format {fmt!r}; expected one of {INPUT_FORMATS}")


def format_output(value, kind: str, fmt: str) -> str:
    """Render an answer value of one kind in one output format."""
    if kind == "bool":
        return {"yn": ("no", "yes"), "10": ("0", "1"), "tf": ("F", "T")}[fmt][bool(value)]
    if kind == "int":
        return str(value) if fmt == "dec" else "".join(LET[int(c)] for c in str(value))
    if kind == "char":
        return {"chr": value, "up": value.upper(), "idx": str(LET.index(value) + 1)}[fmt]
    if kind == "seq":
        return {"str": "".join(value), "csv": ",".join(value), "brk": "[" + " ".join(value) + "]"}[fmt]
    raise ValueError(f"unknown answer kind {kind!r}")


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the decoded answer equals the reference exactly; an empty prediction always scores 0."""
    return float(bool(prediction) and prediction == answer)
