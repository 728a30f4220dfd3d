from __future__ import annotations

import torch
from torch import nn

from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines


class Wrapper(nn.Module):
    """Captum's usual segmentation wrapper: one class of the map, masked, summed per image."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3))
        mask = torch.zeros(7, 8)
        mask[1:5, 2:7] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 1].mul(self.mask).sum((1, 2))


torch.manual_seed(0)
MODEL = Wrapper().eval()
SHAPE = (3, 9, 10)


def test_golden_the_region_sum_is_maintained_by_its_delta() -> None:
    lines = rewritten_lines(MODEL, SHAPE, patch=2, score="logit")  # one score: no softmax
    region = next(line for line in lines if "RegionSum" in line)
    assert "{delta}" in region and "⊙ <mask as C×H×W> [scalar]" in region
    assert not any("Project" in line for line in lines)
    assert fired(MODEL, SHAPE, score="logit")["push_delta_through_region_sum"] == 1


def test_equivalent_to_the_model() -> None:
    check_equivalence(MODEL, SHAPE, examples=20)
