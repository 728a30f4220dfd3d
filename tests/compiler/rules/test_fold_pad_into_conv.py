from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines


class SamePadded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(F.pad(x, (0, 1, 0, 1))).mean((2, 3)))


SHAPE = (2, 10, 10)


def test_golden_padding_is_absorbed() -> None:
    lines = rewritten_lines(SamePadded().eval(), SHAPE, patch=2)
    assert not any(line.split()[1].startswith("Pad") for line in lines)
    assert "p=t0 b1 l0 r1" in lines[2]
    assert fired(SamePadded().eval(), SHAPE)["fold_pad_into_conv"] == 1


class Padded(SamePadded):
    """A pad of value 1 on all four sides, top and left larger: it cannot be folded, and its
    box moves by (top, left) = (1, 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(F.pad(x, (2, 1, 1, 1), value=1.0)).mean((2, 3)))


def test_nonzero_padding_is_not_folded() -> None:
    assert "fold_pad_into_conv" not in fired(Padded().eval(), SHAPE)
    lines = rewritten_lines(Padded().eval(), SHAPE, patch=2)
    assert "Pad" in lines[2] and "{elementwise box=2×2}" in lines[2]


def test_unfolded_padding_is_equivalent_to_the_model() -> None:
    check_equivalence(Padded().eval(), SHAPE)


def test_equivalent_to_the_model() -> None:
    check_equivalence(SamePadded().eval(), SHAPE)
