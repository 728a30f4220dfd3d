from __future__ import annotations

import torch
from torch import nn

from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines

torch.manual_seed(0)  # module-level weights: the same whatever was imported before
MODEL = nn.Sequential(
    nn.Conv2d(3, 2, 3),
    nn.ReLU(),
    nn.AdaptiveMaxPool2d(2),
    nn.Flatten(),
    nn.Linear(8, 3),
    nn.ReLU(),
    nn.Linear(3, 3),
).eval()
SHAPE = (3, 9, 11)


def test_golden_projection_before_the_first_global_operator() -> None:
    lines = rewritten_lines(MODEL, SHAPE, patch=2)
    assert "Project(#4)" in lines[4] and "{project}" in lines[4]
    assert all("{full}" in line for line in lines[5:])
    assert fired(MODEL, SHAPE)["project_before_global"] == 5


def test_equivalent_to_the_model() -> None:
    check_equivalence(MODEL, SHAPE)
