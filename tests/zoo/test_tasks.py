"""The task family: enough genuinely different tasks, disjoint splits, determinism, the metric."""

from __future__ import annotations

import collections

import pytest

from uws_core.zoo.task_operations import (INPUT_FORMATS, OPERATIONS, OUTPUT_FORMATS, exact_match, format_input,
                                          format_output)
from uws_core.zoo.tasks import BaseMixture, CharTokenizer, Task, make_tasks


@pytest.fixture(scope="module")
def tasks():
    return make_tasks(72, seed=0, n_train=64, n_val=16, n_test=32)


def test_at_least_64_distinct_tasks_over_operations_and_formats(tasks):
    assert len(tasks) == 72 and len({t.name for t in tasks}) == 72
    assert len({(t.operation, t.input_format, t.output_format) for t in tasks}) == 72
    assert len({t.operation for t in tasks}) == len(OPERATIONS) >= 25
    assert {t.input_format for t in tasks} == set(INPUT_FORMATS)
    assert {t.output_format for t in tasks} == {f for fs in OUTPUT_FORMATS.values() for f in fs}
    assert {t.op.kind for t in tasks} == set(OUTPUT_FORMATS)
    # no operation dominates: round-robin gives each 2 or 3 tasks out of 72
    assert set(collections.Counter(t.operation for t in tasks).values()) <= {2, 3}


def test_splits_are_disjoint_and_sized(tasks):
    for t in tasks:
        keys = [[e.key for e in t.split(s)] for s in ("train", "val", "test")]
        assert [len(k) for k in keys] == [64, 16, 32], t.name
        assert len(set().union(*map(set, keys))) == 64 + 16 + 32, t.name  # distinct, hence disjoint
        prompts = [{e.prompt for e in t.split(s)} for s in ("train", "val", "test")]
        assert not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2]), t.name


def test_deterministic_from_seed():
    a, b, c = (make_tasks(64, seed=s, n_train=8, n_val=4, n_test=8) for s in (3, 3, 4))
    assert [(t.name, [e.prompt for e in t.test]) for t in a] == [(t.name, [e.prompt for e in t.test]) for t in b]
    assert [e.prompt for t in a for e in t.test] != [e.prompt for t in c for e in t.test]


def test_base_mixture_never_samples_held_out_inputs(tasks):
    mix = BaseMixture(tasks, seed=0, format_fraction=0.5)
    held = {(t.operation, e.key) for t in tasks for e in t.val + t.test}
    lora_noncanonical = {(t.operation, t.input_format, t.output_format) for t in tasks if not t.canonical}
    drawn = mix.sample_tagged(3000)
    assert not {(t.operation, e.key) for t, e in drawn} & held
    seen = {(t.operation, t.input_format, t.output_format) for t, _ in drawn}
    assert not (seen & lora_noncanonical)  # the base never sees a non-canonical LoRA task's format combo
    assert BaseMixture(tasks, seed=0).sample(20) == BaseMixture(tasks, seed=0).sample(20)


def test_metric_scores_empty_and_wrong_as_zero(tasks):
    assert exact_match("", "") == 0.0 and exact_match("", "yes") == 0.0
    assert exact_match("ye", "yes") == 0.0 and exact_match("yes ", "yes") == 0.0
    assert exact_match("yes", "yes") == 1.0
    t = tasks[0]
    assert t.score([e.answer for e in t.test]) == 1.0
    assert t.score([""] * len(t.test)) == 0.0
    with pytest.raises(ValueError, match=t.name):
        t.score(["x"])
    with pytest.raises(KeyError, match="dev"):
        t.split("dev")


@pytest.mark.parametrize("op, param, in_fmt, out_fmt, payload, prompt, answer", [
    ("reverse", None, "plain", "str", tuple("abc"), "reverse:abc>", "cba"),
    ("sort_desc", None, "comma", "csv", tuple("314"), "sort down/csv:3,1,4>", "4,3,1"),
    ("count", "b", "bracket", "abc", tuple("abba"), "count b/abc:[a b b a]>", "c"),
    ("add", None, "kv", "dec", (tuple("12"), tuple("9")), "add:x=12 y=9>", "21"),
    ("palindrome", None, "plain", "tf", tuple("aba"), "palindrome?/tf:aba>", "T"),
    ("nth", "2", "plain", "idx", tuple("xcz"), "item 2/idx:xcz>", "3"),
    ("interleave", None, "comma", "brk", (tuple("ab"), tuple("12")), "zip/brk:a,b;1,2>", "[a 1 b 2]"),
    ("caesar", "2", "plain", "str", tuple("xyz"), "shift 2:xyz>", "zab"),
])
def test_examples_by_hand(op, param, in_fmt, out_fmt, payload, prompt, answer):
    e = Task("t", op, param, in_fmt, out_fmt).example(payload)
    assert (e.prompt, e.answer) == (prompt, answer)


def test_formats_and_balance(tasks):
    assert format_input((tuple("12"), tuple("34")), 2, "bracket") == "[1 2][3 4]"
    assert format_output(True, "bool", "10") == "1" and format_output(7, "int", "abc") == "h"
    with pytest.raises(ValueError, match="csvx"):
        format_input(tuple("ab"), 1, "csvx")
    for t in tasks:
        if t.op.kind == "bool":  # boolean tasks are balanced, so a constant answer scores about 0.5
            frac = sum(e.answer in ("yes", "1", "T") for e in t.train)
            assert 0.25 <= frac / len(t.train) <= 0.75, t.name


def test_tokenizer_round_trip(tasks):
    tok = CharTokenizer()
    for t in tasks:
        for e in t.test[:4]:
            assert tok.decode(tok.encode(e.prompt + e.answer) + [tok.eos_id, 5]) == e.prompt + e.answer
            assert len(e.prompt) + len(e.answer) + 2 <= 64  # fits the model's max_position_embeddings
    with pytest.raises(ValueError, match="alphabet"):
        tok.encode("é")
