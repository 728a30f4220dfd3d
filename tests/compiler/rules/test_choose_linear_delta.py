from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines

torch.manual_seed(0)  # module-level weights: the same whatever was imported before
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


@pytest.mark.parametrize("strategy", ["recompute", "delta"])
@pytest.mark.parametrize(
    "pool",
    [
        nn.AvgPool2d(3, 2, 1, ceil_mode=True),  # the last window overhangs: a smaller divisor
        nn.AvgPool2d(3, 2, 1, count_include_pad=False),
        nn.AvgPool2d((2, 3), (1, 2), (1, 0), ceil_mode=True, divisor_override=4),
    ],
    ids=["ceil", "exclude-pad", "override"],
)
def test_average_pool_divisors_in_both_forms(pool: nn.Module, strategy: str) -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), pool, nn.Flatten(), nn.LazyLinear(2)
    ).eval()
    model(torch.zeros(1, *SHAPE))
    check_equivalence(model, SHAPE, linear_strategy=strategy)
