from __future__ import annotations

import torch
from torch import nn

from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines


class Masked(nn.Module):
    """A map, multiplied by a constant mask, then averaged or summed over space."""

    def __init__(self, reduce: str, mask: torch.Tensor, share: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.register_buffer("mask", mask)
        self.reduce, self.share = reduce, share

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        product = self.conv(x).relu() * self.mask
        scores = product.mean((2, 3)) if self.reduce == "mean" else product.sum((2, 3))
        if self.share:  # the product has a second reader: it must stay a map
            scores = scores + product[:, :, 0, 0]
        return scores


torch.manual_seed(0)
MASK = (torch.rand(2, 8, 7) > 0.5).float() * torch.rand(2, 8, 7)
SHAPE = (3, 8, 7)


def test_golden_the_masked_mean_becomes_one_region_sum() -> None:
    model = Masked("mean", MASK).eval()
    lines = rewritten_lines(model, SHAPE, patch=2)
    assert "RegionSum(#" in lines[-1] and "⊙ mask" in lines[-1] and "× 0.01786" in lines[-1]
    assert not any("Combine" in line for line in lines)
    assert fired(model, SHAPE)["fold_mask_into_region_sum"] == 1


def test_golden_a_mask_of_one_channel_folds_into_a_sum() -> None:
    model = Masked("sum", MASK[:1]).eval()
    lines = rewritten_lines(model, SHAPE, patch=2)
    assert "RegionSum(#" in lines[-1] and "× " not in lines[-1]


def test_golden_a_product_read_twice_is_kept() -> None:
    model = Masked("sum", MASK, share=True).eval()
    assert "fold_mask_into_region_sum" not in fired(model, SHAPE)
    assert any("Combine" in line for line in rewritten_lines(model, SHAPE, patch=2))


def test_equivalent_to_the_model() -> None:
    for model in (Masked("mean", MASK), Masked("sum", MASK[:1]), Masked("sum", MASK, True)):
        check_equivalence(model.eval(), SHAPE, examples=10)
