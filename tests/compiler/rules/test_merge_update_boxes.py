from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines


class Branches(nn.Module):
    """A residual add and a concat whose operands' boxes differ in size and position."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(2, 2, 5, padding=2)
        self.tall = nn.Conv2d(2, 2, (7, 1), padding=(3, 0))
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.wide(x) + x
        z = torch.cat([y, self.tall(x), x], dim=1)
        return self.fc(z.mean((2, 3)))


SHAPE = (2, 12, 11)


def test_golden_bounding_boxes() -> None:
    lines = rewritten_lines(Branches().eval(), SHAPE, patch=3)
    add = next(line for line in lines if "Combine" in line)
    cat = next(line for line in lines if "Concat" in line)
    assert "{bbox box=7×7}" in add  # 3 + 5 − 1 covers the identity operand's 3×3
    assert "{bbox box=9×7}" in cat  # rows from the 7×1 branch, columns from the 5×5 one
    assert fired(Branches().eval(), SHAPE)["merge_update_boxes"] == 2


def test_equivalent_to_the_model() -> None:
    check_equivalence(Branches().eval(), SHAPE)


class Arithmetic(nn.Module):
    """``a − b``, ``a · b`` and ``a / b`` of two changed branches with different boxes."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(2, 2, 5, padding=2)
        self.tall = nn.Conv2d(2, 2, (7, 1), padding=(3, 0))
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.wide(x), self.tall(x)
        quotient = a / (torch.sigmoid(b) + 0.5)
        return self.fc(torch.cat([a - b, a * b, quotient], dim=1).mean((2, 3)))


@pytest.mark.parametrize("strategy", ["recompute", "delta"])
def test_arithmetic_of_two_changed_branches(strategy: str) -> None:
    lines = rewritten_lines(Arithmetic().eval(), SHAPE, patch=3, linear_strategy=strategy)
    sub = next(line for line in lines if "a - b" in line)
    assert ("{delta box=9×7}" if strategy == "delta" else "{bbox box=9×7}") in sub
    check_equivalence(Arithmetic().eval(), SHAPE, linear_strategy=strategy)
