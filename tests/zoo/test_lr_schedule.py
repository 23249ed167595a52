import math

import pytest

from uws_core.zoo.lr_schedule import warmup_cosine


def test_warmup_then_cosine_by_hand():
    # total 10, warm-up ceil(0.2 * 10) = 2 steps: 0.5, 1.0, then cosine over the remaining 8 steps
    lrs = [warmup_cosine(s, 10, 1.0, 0.2) for s in range(11)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2] == pytest.approx(1.0) and lrs[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[10] == 0.0 and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


def test_at_least_one_warmup_step():
    assert warmup_cosine(0, 3, 2.0, 0.0) == 2.0
