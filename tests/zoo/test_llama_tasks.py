"""Task groups of the Llama population: languages are bijections, verifier examples are right, the plan cycles."""

from __future__ import annotations

import string

import pytest

from uws_core.zoo.llama_tasks import (DOMAINS, TASK_GROUPS, examples_of, finetune_plan, language_map, translate,
                                  translate_examples, verify_examples)
from uws_core.zoo.task_operations import OPERATIONS, OUTPUT_FORMATS, format_output
from uws_core.zoo.tasks import make_tasks


@pytest.fixture(scope="module")
def tasks():
    return make_tasks(54, seed=0, n_train=16, n_val=4, n_test=12)


def test_domains_partition_the_operations():
    ops = [o for d in DOMAINS.values() for o in d]
    assert sorted(ops) == sorted(OPERATIONS) and len(ops) == len(set(ops))


def test_language_is_a_letter_derangement_and_deterministic():
    assert language_map("en") == {} and translate("sort up:3 1>", "en") == "sort up:3 1>"
    m = language_map("xa")
    assert sorted(m) == sorted(m.values()) == list(string.ascii_lowercase)   # a bijection of the letters
    assert all(k != v for k, v in m.items())                                   # every letter changes
    assert m == language_map("xa") and m != language_map("xb")
    text = "reverse:[a b z]>zba 0,9;X=?"
    out = translate(text, "xa")
    assert [c for c in out if not c.islower()] == [c for c in text if not c.islower()]  # the rest is kept
    inverse = {v: k for k, v in m.items()}
    assert "".join(inverse.get(c, c) for c in out) == text
    with pytest.raises(ValueError, match="language"):
        language_map("")


def test_translated_examples_keep_keys_and_change_letters(tasks):
    t = next(t for t in tasks if t.operation == "reverse")
    tr = translate_examples(t.test, "xb")
    assert [e.key for e in tr] == [e.key for e in t.test]
    assert all(a.prompt != b.prompt for a, b in zip(tr, t.test))                # the instruction has letters
    assert [translate(e.answer, "xb") for e in t.test] == [e.answer for e in tr]


def test_verifier_examples_are_correct_and_balanced(tasks):
    t = next(t for t in tasks if t.operation == "add")
    v = verify_examples(t, "test", seed=0)
    assert len(v) == len(t.test) and {e.answer for e in v} == {"yes", "no"}
    for e, orig in zip(v, t.test):
        cand = e.prompt[len("ok?" + orig.prompt):-1]
        assert e.prompt.startswith("ok?" + orig.prompt) and e.prompt.endswith("?")
        assert (cand == orig.answer) == (e.answer == "yes")
        value = t.op.apply(orig.key, t.param)                       # a wrong candidate: the value, other format
        assert cand in {format_output(value, "int", f) for f in OUTPUT_FORMATS["int"]}
    assert v == verify_examples(t, "test", seed=0)
    many = [e.answer for t in tasks for e in verify_examples(t, "train")]
    assert 0.4 < many.count("yes") / len(many) < 0.6


def test_verifier_refuses_a_split_with_one_answer(tasks):
    t = next(t for t in tasks if t.operation == "is_even")
    t1 = type(t)(t.name, t.operation, t.param, t.input_format, t.output_format, test=[t.test[0]] * 3)
    with pytest.raises(ValueError, match="all answers equal"):
        verify_examples(t1, "test")


def test_examples_of_pools_tasks_in_language(tasks):
    two = tasks[:2]
    ex = examples_of(two, "test", "xc", verify=True)
    assert len(ex) == 2 * 12 and {e.answer for e in ex} <= {translate("yes", "xc"), translate("no", "xc")}


def test_plan_cycles_groups_and_respects_domains(tasks):
    plan = finetune_plan(tasks, n_finetunes=16, tasks_per_model=3, seed=1)
    assert [p["task_group"] for p in plan] == [TASK_GROUPS[j % 4] for j in range(16)]
    assert len({p["name"] for p in plan}) == 16 and len({p["seed"] for p in plan}) == 16
    by_name = {t.name: t for t in tasks}
    for p in plan:
        assert len(p["tasks"]) == 3 == len(set(p["tasks"]))
        assert (p["language"] != "en") == (p["task_group"] == "language")
        if p["task_group"] in ("domain", "reward"):
            assert all(by_name[n].operation in DOMAINS[p["domain"]] for n in p["tasks"])
    assert {p["domain"] for p in plan if p["task_group"] == "domain"} == set(DOMAINS)
    assert plan == finetune_plan(tasks, n_finetunes=16, tasks_per_model=3, seed=1)
    assert plan != finetune_plan(tasks, n_finetunes=16, tasks_per_model=3, seed=2)
    with pytest.raises(ValueError, match="n_finetunes"):
        finetune_plan(tasks, n_finetunes=0)
