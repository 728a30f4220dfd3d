from __future__ import annotations

import torch
from torch import nn

from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines

torch.manual_seed(0)  # module-level weights: the same whatever was imported before
MODEL = nn.Sequential(
    nn.Conv2d(2, 3, 3, stride=2, padding=1),
    nn.MaxPool2d(2, ceil_mode=True),
    nn.Flatten(),
    nn.Linear(3 * 3 * 3, 2),
).eval()
SHAPE = (2, 11, 10)


def test_golden_boxes() -> None:
    lines = rewritten_lines(MODEL, SHAPE, patch=3)
    assert "{recompute box=3×3 read=7×7}" in lines[2]  # ceil((3 + 3 − 1)/2) = 3
    assert "{recompute box=2×2 read=4×4}" in lines[3]  # ceil((3 + 2 − 1)/2) = 2
    assert fired(MODEL, SHAPE)["push_delta_through_join"] == 2


def test_equivalent_to_the_model() -> None:
    check_equivalence(MODEL, SHAPE)
