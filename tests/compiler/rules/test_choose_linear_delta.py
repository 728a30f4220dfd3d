from __future__ import annotations

from torch import nn

from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines

MODEL = nn.Sequential(
    nn.Conv2d(2, 3, 3, padding=1),
    nn.BatchNorm2d(3),
    nn.AvgPool2d(3, 2, 1),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(3, 2),
).eval()
SHAPE = (2, 9, 10)


def test_cost_keeps_recompute_for_convolutions() -> None:
    """Dense delta convolutions cost the same FMAs and move more bytes: recompute wins."""
    lines = rewritten_lines(MODEL, SHAPE, patch=3)
    assert "{recompute box=5×5 read=7×7}" in lines[2]
    assert "choose_linear_delta" not in fired(MODEL, SHAPE)


def test_golden_forced_delta_forms() -> None:
    lines = rewritten_lines(MODEL, SHAPE, patch=3, linear_strategy="delta")
    assert "{delta box=5×5 read=7×7}" in lines[2]  # conv
    assert "{delta box=5×5}" in lines[3]  # batch norm
    assert "{delta box=4×4 read=9×9}" in lines[4]  # average pool: ceil((5 + 3 − 1)/2) = 4
    assert fired(MODEL, SHAPE, linear_strategy="delta")["choose_linear_delta"] == 3


def test_delta_forms_are_equivalent_to_the_model() -> None:
    check_equivalence(MODEL, SHAPE, linear_strategy="delta")
