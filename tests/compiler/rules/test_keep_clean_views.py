from __future__ import annotations

import torch
from torch import nn

from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines


class WithConstant(nn.Module):
    """A learned per-position bias: a constant branch the occlusion never changes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.position = nn.Parameter(torch.randn(1, 3, 8, 8))
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((self.conv(x) + self.position * 2.0).mean((2, 3)))


SHAPE = (2, 8, 8)


def test_golden_constant_branch_stays_clean() -> None:
    """The weights-only branch ``position * 2`` is folded into one constant at import; it
    stays a clean view that every query reads."""
    lines = rewritten_lines(WithConstant().eval(), SHAPE, patch=2)
    constant = next(line for line in lines if "Constant" in line)
    assert "{view}" in constant and "<mul as C×H×W>" in constant
    assert not any("Scalar" in line for line in lines)
    assert fired(WithConstant().eval(), SHAPE)["keep_clean_views"] == 2  # input and constant


def test_equivalent_to_the_model() -> None:
    check_equivalence(WithConstant().eval(), SHAPE)
