"""What the laptop Llama fine-tunes are trained on: task groups, "languages" and verifier ("reward") tasks.

The public LLaMA-3-8B population of the paper is 50 full fine-tunes of one base: instruction tunes, domain
tunes (medicine, finance, code), language tunes (Italian, Turkish, multilingual) and reward / judge models.
Here each of those has an analogue built on the generated tasks of :mod:`uws_core.zoo.tasks`:

* **instruction**: a mixture of tasks drawn from every domain;
* **domain**: tasks of one domain (:data:`DOMAINS`: arithmetic, string edits, lookup, logic);
* **language**: a mixture written in another "language", a fixed bijection on the lowercase letters applied
  to prompt and answer (:func:`translate`): instructions, letter payloads and letter answers all change,
  digits and punctuation stay, so the model must relearn what the letters mean;
* **reward**: verifier tasks (:func:`verify_examples`): the prompt shows a task's prompt and a candidate
  answer (the right one, or the right value written in another output format, 50/50); the answer is
  ``yes`` / ``no``: a judge of compliance with the requested format.

:func:`finetune_plan` lists the fine-tunes (task group, language, tasks, seed, learning rate, steps).
Everything is deterministic from seeds (:func:`uws_core.zoo.tasks.stable_seed`).
"""

from __future__ import annotations

import string

import numpy as np

from uws_core.zoo.task_operations import OUTPUT_FORMATS, format_output
from uws_core.zoo.tasks import Example, Task, stable_seed

__all__ = ["DOMAINS", "TASK_GROUPS", "language_map", "translate", "translate_examples", "verify_examples",
           "examples_of", "finetune_plan"]

# operation -> domain; every operation of uws_core.zoo.task_operations.OPERATIONS belongs to exactly one domain
DOMAINS: dict[str, tuple[str, ...]] = {
    "arith": ("add", "subtract", "sum_mod10", "max_digit", "min_digit", "is_even", "greater"),
    "strings": ("reverse", "rotate", "every_second", "dedupe", "caesar", "interleave", "sort_asc", "sort_desc"),
    "lookup": ("first", "last", "nth", "majority", "length", "count", "letters_of", "digits_of"),
    "logic": ("palindrome", "is_sorted", "contains", "has_repeat"),
}
TASK_GROUPS = ("instruction", "domain", "language", "reward")
LETTERS = string.ascii_lowercase


def language_map(language: str) -> dict[str, str]:
    """The bijection on characters that writes text in ``language``: ``"en"`` is the identity; any other
    name is a permutation of the 26 lowercase letters drawn from the name (no letter maps to itself)."""
    if not language or not isinstance(language, str):
        raise ValueError(f"a language is a non-empty name, got {language!r}")
    if language == "en":
        return {}
    rng = np.random.default_rng(stable_seed("language", language))
    while True:  # a derangement, so every letter changes
        perm = rng.permutation(26)
        if not np.any(perm == np.arange(26)):
            return {LETTERS[i]: LETTERS[j] for i, j in enumerate(perm)}


def translate(text: str, language: str) -> str:
    """``text`` with every lowercase letter replaced by its image under :func:`language_map`."""
    m = language_map(language)
    return "".join(m.get(c, c) for c in text) if m else text


def translate_examples(examples: list[Example], language: str) -> list[Example]:
    """The examples with prompt and answer written in ``language`` (payload keys kept)."""
    if language == "en":
        return list(examples)
    m = language_map(language)
    tr = lambda s: "".join(m.get(c, c) for c in s)  # noqa: E731
    return [Example(tr(e.prompt), tr(e.answer), key=e.key) for e in examples]


def verify_examples(task: Task, split: str, seed: int = 0) -> list[Example]:
    """Verifier ("reward model") examples of one task split: ``"ok?" + prompt + candidate + "?"`` -> yes / no.

    Each example of the split appears once; with probability 1/2 its candidate is its own answer ("yes"),
    else the same answer value written in another output format of the task's answer kind ("no": e.g.
    ``1,3,4`` when the instruction asks for ``134``), so the judge has to check the reply against the
    requested format, as a reward model checks compliance. When every other format renders the value
    identically (a one-item list), the wrong candidate is another example's answer instead.
    """
    base = task.split(split)
    if len({e.answer for e in base}) < 2:
        raise ValueError(f"task {task.name!r} split {split!r}: all answers equal, cannot make wrong candidates")
    kind = task.op.kind
    rng = np.random.default_rng(stable_seed("verify", seed, task.name, split))
    out = []
    for e in base:
        right = bool(rng.random() < 0.5)
        cand = e.answer
        if not right:
            value = task.op.apply(e.key, task.param)
            others = [f for f in OUTPUT_FORMATS[kind] if f != task.output_format]
            wrong = [c for c in (format_output(value, kind, f) for f in others) if c != e.answer]
            if not wrong:
                wrong = sorted({x.answer for x in base} - {e.answer})
            cand = wrong[int(rng.integers(len(wrong)))]
        out.append(Example(f"ok?{e.prompt}{cand}?", "yes" if right else "no", key=(e.key, cand)))
    return out


def examples_of(tasks: list[Task], split: str, language: str = "en", verify: bool = False,
                seed: int = 0) -> list[Example]:
    """The pooled ``split`` examples of several tasks, as verifier examples when ``verify``, in ``language``."""
    out = []
    for t in tasks:
        out += verify_examples(t, split, seed) if verify else t.split(split)
    return translate_examples(out, language)


def _domain_of(task: Task) -> str:
    for d, ops in DOMAINS.items():
        if task.operation in ops:
            return d
    raise KeyError(f"operation {task.operation!r} of task {task.name!r} is in no domain of DOMAINS")


def finetune_plan(tasks: list[Task], n_finetunes: int = 40, tasks_per_model: int = 4,
                  languages: tuple = ("xa", "xb", "xc"), lrs: tuple = (1e-3, 2e-3, 3e-3),
                  steps: tuple = (100, 120), seed: int = 0, reward_steps: tuple | None = None) -> list[dict]:
    """The fine-tunes of the population, cycling through the task groups.

    Model j has task group ``TASK_GROUPS[j % 4]`` (instruction, domain, language, reward, ...); its
    ``tasks_per_model`` tasks are drawn from the whole pool (instruction, language) or from one domain
    (domain, reward; the domains taken in turn); language models cycle through ``languages``; learning rate
    and step count are drawn from ``lrs`` and ``steps`` (a sweep, as the public models have different
    recipes); reward models draw theirs from ``reward_steps`` when given (a format judge learns late).
    Returns dicts with name, task_group, language, domain, tasks (task names), seed, lr, steps.
    """
    if n_finetunes < 1 or tasks_per_model < 1:
        raise ValueError(f"n_finetunes={n_finetunes} and tasks_per_model={tasks_per_model} must be >= 1")
    by_domain = {d: [t for t in tasks if _domain_of(t) == d] for d in DOMAINS}
    usable = {d: ts for d, ts in by_domain.items() if len(ts) >= tasks_per_model}
    if not usable:
        raise ValueError(f"no domain has {tasks_per_model} tasks among the {len(tasks)} given")
    domain_order = list(usable)
    rng = np.random.default_rng(stable_seed("llama-plan", seed))
    plan, n_dom, n_lang = [], {"domain": 0, "reward": 0}, 0
    for j in range(n_finetunes):
        group = TASK_GROUPS[j % len(TASK_GROUPS)]
        language, domain = "en", "mixed"
        if group in ("domain", "reward"):
            domain = domain_order[n_dom[group] % len(domain_order)]  # each group takes the domains in turn
            n_dom[group] += 1
            pool = usable[domain]
        else:
            pool = tasks
        if group == "language":
            language = languages[n_lang % len(languages)]
            n_lang += 1
        n_steps = reward_steps if group == "reward" and reward_steps else steps
        chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=min(tasks_per_model, len(pool)),
                                                     replace=False))]
        plan.append(dict(name=f"ft{j:02d}_{group}_{domain}_{language}", task_group=group, language=language,
                         domain=domain, tasks=[t.name for t in chosen], seed=stable_seed("llama-ft", seed, j),
                         lr=float(lrs[int(rng.integers(len(lrs)))]),
                         steps=int(n_steps[int(rng.integers(len(n_steps)))])))
    return plan
