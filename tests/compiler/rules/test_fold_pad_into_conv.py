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


def test_nonzero_padding_is_not_folded() -> None:
    class Padded(SamePadded):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(F.pad(x, (0, 1, 0, 1), value=1.0)).mean((2, 3)))

    assert "fold_pad_into_conv" not in fired(Padded().eval(), SHAPE)
    check_equivalence(Padded().eval(), SHAPE, examples=6)


def test_equivalent_to_the_model() -> None:
    check_equivalence(SamePadded().eval(), SHAPE)
