from __future__ import annotations

import torch
from torch import nn

from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines

torch.manual_seed(0)  # module-level weights: the same whatever was imported before
MODEL = nn.Sequential(
    nn.Conv2d(2, 3, 1),
    nn.BatchNorm2d(3),
    nn.SiLU(),
    nn.Hardswish(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(3, 2),
).eval()
SHAPE = (2, 9, 9)


def test_golden_boxes_stay_put() -> None:
    lines = rewritten_lines(MODEL, SHAPE, patch=4)
    assert all("{elementwise box=4×4}" in line for line in lines[3:6])
    assert fired(MODEL, SHAPE)["push_delta_through_map"] == 3


def test_equivalent_to_the_model() -> None:
    check_equivalence(MODEL, SHAPE)
