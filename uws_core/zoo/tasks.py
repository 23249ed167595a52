"""A family of small instruction tasks, in the spirit of Natural Instructions, and a character tokenizer.

A task is one *operation* (reverse, sort, count a letter, add two numbers, palindrome?, ...) crossed
with one *input format* (``plain`` "3142", ``comma`` "3,1,4,2", ``bracket`` "[3 1 4 2]", ``kv`` "x=3142")
and one *output format* (booleans as yes/no, 1/0 or T/F; numbers as digits or as letters a=0..j=9;
sequences as a string, comma list or bracketed list; single letters as lower case, upper case or their
index in the alphabet). Every prompt starts with a short instruction that names the operation and, for
a non-canonical output format, the format (``"sort up/csv:[3 1 4]>"`` -> ``"1,3,4"``).

There are 27 operations and 296 combinations; :func:`make_tasks` draws the LoRA tasks among them. The
base model is instruction-tuned (:class:`BaseMixture`) on every operation in its *canonical* format
(plain input, first output format) and on part of the *other* combinations, never on a non-canonical
LoRA task's own combination: so, as an instruction-tuned base, it is good at some LoRA tasks, partly
right on others (format codes it knows from other operations) and near zero on the rest.

Each task has fixed, disjoint train / val / test examples (disjoint *inputs*), drawn deterministically
from a seed; the held-out inputs of every task are also excluded from the base model's training data.
The metric is exact match of the greedy answer (up to EOS); an empty answer scores 0.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np

from uws_core.linalg.numerics import stable_seed_32 as stable_seed  # the tasks' 32-bit seeds
from uws_core.zoo.task_operations import (INPUT_FORMATS, OPERATIONS, OUTPUT_FORMATS, Operation, exact_match,
                                          format_input, format_output)

__all__ = ["CharTokenizer", "Example", "Task", "task_combinations", "make_tasks", "BaseMixture", "stable_seed"]

# ---------------------------------------------------------------------------------------------- tokenizer
PAD, BOS, EOS = 0, 1, 2
CHARS = string.digits + string.ascii_lowercase + string.ascii_uppercase + " ,;:=[]()<>/?!.-+#_"


class CharTokenizer:
    """Character-level tokenizer: ids 0, 1, 2 are <pad>, <bos>, <eos>; then one id per character."""

    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def __init__(self, chars: str = CHARS):
        self.chars = chars
        self._index = {c: i + 3 for i, c in enumerate(chars)}
        self.vocab_size = len(chars) + 3

    def encode(self, text: str) -> list[int]:
        try:
            return [self._index[c] for c in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} in {text!r} is not in the tokenizer's alphabet") from None

    def decode(self, ids, mark_specials: bool = False) -> str:
        """Characters up to the first <eos>; <pad> and <bos> are skipped, or shown as U+FFFD when
        ``mark_specials`` (so a generated answer containing them never equals a reference)."""
        out = []
        for i in (int(t) for t in ids):
            if i == EOS:
                break
            if i >= 3:
                out.append(self.chars[i - 3])
            elif mark_specials:
                out.append("\ufffd")
        return "".join(out)


# ---------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Example:
    prompt: str  # instruction + formatted input + ">"
    answer: str  # formatted answer (the model must then emit <eos>)
    key: tuple = field(compare=False, repr=False, default=())  # the payload, for disjointness checks


@dataclass
class Task:
    """One task = operation x parameter x input format x output format, with fixed example splits."""

    name: str
    operation: str
    param: str | None
    input_format: str
    output_format: str
    train: list = field(default_factory=list, repr=False)
    val: list = field(default_factory=list, repr=False)
    test: list = field(default_factory=list, repr=False)

    @property
    def family(self) -> str:
        return self.operation

    @property
    def op(self) -> Operation:
        return OPERATIONS[self.operation]

    @property
    def canonical(self) -> bool:
        return self.input_format == "plain" and self.output_format == OUTPUT_FORMATS[self.op.kind][0]

    @property
    def instruction(self) -> str:
        text = self.op.instruction.replace("{p}", str(self.param))
        return text if self.output_format == OUTPUT_FORMATS[self.op.kind][0] else f"{text}/{self.output_format}"

    def example(self, payload) -> Example:
        prompt = f"{self.instruction}:{format_input(payload, self.op.arity, self.input_format)}>"
        return Example(prompt, format_output(self.op.apply(payload, self.param), self.op.kind,
                                             self.output_format), key=payload)

    def split(self, name: str) -> list:
        if name not in ("train", "val", "test"):
            raise KeyError(f"task {self.name!r} has no split {name!r}; expected train, val or test")
        return getattr(self, name)

    def score(self, predictions, split: str = "test") -> float:
        """Mean exact match of predicted answer strings against one split's references."""
        refs = self.split(split)
        if len(predictions) != len(refs):
            raise ValueError(f"task {self.name!r}: {len(predictions)} predictions for {len(refs)} {split} examples")
        return float(np.mean([exact_match(p, e.answer) for p, e in zip(predictions, refs)]))


def _draw(op: Operation, param, rng, n: int, exclude: set, max_tries: int = 200) -> list:
    """n distinct payloads not in ``exclude`` (which is updated in place)."""
    out = []
    tries = 0
    while len(out) < n:
        p = op.sample(rng, param)
        if p in exclude:
            tries += 1
            if tries > max_tries * n:
                raise ValueError(f"operation {op.name!r}: cannot draw {n} distinct inputs")
            continue
        exclude.add(p)
        out.append(p)
    return out


def task_combinations() -> list[tuple[str, str, str]]:
    """Every (operation, input format, output format) combination, canonical ones included."""
    return [(o.name, i, f) for o in OPERATIONS.values() for i in INPUT_FORMATS for f in OUTPUT_FORMATS[o.kind]]


def make_tasks(n_tasks: int = 72, seed: int = 0, n_train: int = 256, n_val: int = 32,
               n_test: int = 64) -> list[Task]:
    """Draw ``n_tasks`` distinct tasks and their disjoint example splits, deterministically from ``seed``.

    Operations are visited round-robin in a shuffled order (all 27 appear before any repeats), taking the
    next of that operation's shuffled (input format, output format) combinations; the task parameter
    (letter to count, shift, position) is drawn per task. Test and val inputs are drawn first and never
    reused for training within the task.
    """
    combos = task_combinations()
    if not 1 <= n_tasks <= len(combos):
        raise ValueError(f"n_tasks={n_tasks} must be between 1 and {len(combos)}")
    rng = np.random.default_rng(stable_seed("tasks", seed))
    per_op = {name: [c for c in combos if c[0] == name] for name in OPERATIONS}
    for name in per_op:
        per_op[name] = [per_op[name][i] for i in rng.permutation(len(per_op[name]))]
    op_order = [list(OPERATIONS)[i] for i in rng.permutation(len(OPERATIONS))]
    order, rnd = [], 0
    while len(order) < n_tasks:
        for name in op_order:
            if rnd < len(per_op[name]) and len(order) < n_tasks:
                order.append(per_op[name][rnd])
        rnd += 1
    tasks = []
    for op_name, in_fmt, out_fmt in order:
        op = OPERATIONS[op_name]
        param = op.params[int(rng.integers(len(op.params)))]
        name = f"{op_name}{'' if param is None else '-' + param}_{in_fmt}_{out_fmt}"
        task = Task(name, op_name, param, in_fmt, out_fmt)
        trng = np.random.default_rng(stable_seed("task", seed, name))
        used: set = set()
        task.test = [task.example(p) for p in _draw(op, param, trng, n_test, used)]
        task.val = [task.example(p) for p in _draw(op, param, trng, n_val, used)]
        task.train = [task.example(p) for p in _draw(op, param, trng, n_train, used)]
        tasks.append(task)
    return tasks


class BaseMixture:
    """Sampler of the base model's training mixture ("instruction tuning").

    Every operation appears in its canonical format (plain input, first output format), and, when
    ``format_fraction > 0``, in that fraction of its other (input, output) format combinations that
    are *not* LoRA tasks, so the base learns what the format codes mean on some operations but has
    never seen the exact combination of any non-canonical LoRA task. Each example: operation uniform;
    canonical format with probability 1/2 (always when the operation has no extra combinations), else
    one of its extra combinations; the task parameter uniform ("count b", "shift 2"), so the base learns
    the instruction, not one fixed task. Inputs held out by any LoRA task of the same operation (their
    val and test inputs) are never sampled.
    """

    def __init__(self, tasks: list[Task], seed: int = 0, format_fraction: float = 0.0):
        self.rng = np.random.default_rng(stable_seed("mixture", seed))
        self.held_out = {name: set() for name in OPERATIONS}
        for t in tasks:
            self.held_out[t.operation].update(e.key for e in t.val + t.test)
        lora_combos = {(t.operation, t.input_format, t.output_format) for t in tasks}
        self.combos: dict[str, list] = {}  # operation -> [canonical (in, out), extra (in, out), ...]
        for name, o in OPERATIONS.items():
            canon = ("plain", OUTPUT_FORMATS[o.kind][0])
            extra = [c[1:] for c in task_combinations() if c[0] == name and c[1:] != canon
                     and c not in lora_combos]
            keep = self.rng.random(len(extra)) < format_fraction
            self.combos[name] = [canon] + [c for c, k in zip(extra, keep) if k]
        self._tasks: dict[tuple, Task] = {}

    def task(self, op_name: str, param, in_fmt: str, out_fmt: str) -> Task:
        key = (op_name, param, in_fmt, out_fmt)
        if key not in self._tasks:
            self._tasks[key] = Task(f"{op_name}{'' if param is None else '-' + param}_{in_fmt}_{out_fmt}",
                                    op_name, param, in_fmt, out_fmt)
        return self._tasks[key]

    def sample(self, n: int) -> list[Example]:
        """n fresh examples of the mixture (see the class docstring)."""
        return [e for _, e in self.sample_tagged(n)]

    def sample_tagged(self, n: int) -> list[tuple[Task, Example]]:
        """Like :meth:`sample`, with the task each example was drawn from."""
        names = list(OPERATIONS)
        out = []
        for i in self.rng.integers(len(names), size=n):
            op = OPERATIONS[names[i]]
            combos = self.combos[op.name]
            c = combos[0] if len(combos) == 1 or self.rng.random() < 0.5 else \
                combos[1 + int(self.rng.integers(len(combos) - 1))]
            param = op.params[int(self.rng.integers(len(op.params)))]
            while True:
                p = op.sample(self.rng, param)
                if p not in self.held_out[op.name]:
                    break
            task = self.task(op.name, param, *c)
            out.append((task, task.example(p)))
        return out
