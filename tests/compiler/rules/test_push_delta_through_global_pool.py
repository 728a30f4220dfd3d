from __future__ import annotations

import torch
from torch import nn

from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines

torch.manual_seed(0)  # module-level weights: the same whatever was imported before
MODEL = nn.Sequential(
    nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
).eval()
SHAPE = (3, 10, 9)


def test_golden_pool_is_incremental_not_projected() -> None:
    lines = rewritten_lines(MODEL, SHAPE, patch=2)
    assert "GlobalAvgPool" in lines[4] and "{delta}" in lines[4]
    assert not any("Project" in line for line in lines)
    assert fired(MODEL, SHAPE)["push_delta_through_global_pool"] == 1


def test_equivalent_to_the_model() -> None:
    check_equivalence(MODEL, SHAPE)
