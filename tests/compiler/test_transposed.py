"""Transposed convolutions import as zero insertion and an ordinary convolution (flipped,
channel-swapped kernel), so their boxes are maintained incrementally: each configuration equals
the independent oracle, and none runs as the full-recompute fallback — except a geometry whose
equivalent padding is negative, which says so and stays exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import krypton_ql as kql
from tests.helpers import assert_matches_oracle, responsive

CASES = [
    dict(kernel_size=2, stride=2),  # the U-Net decoder's
    dict(kernel_size=3, stride=2, padding=1, output_padding=1),
    dict(kernel_size=4, stride=2, padding=1),
    dict(kernel_size=3, stride=1, padding=1, groups=2),
    dict(kernel_size=3, stride=2, dilation=2, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), bias=False),
]


IMAGE = torch.randn(3, 9, 8)


def _model(**options) -> nn.Module:
    torch.manual_seed(0)
    return responsive(nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(4, 6, **options), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).eval(), IMAGE)  # fmt: skip


@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_a_transposed_convolution_is_incremental_and_exact(options) -> None:
    model, image = _model(**options), IMAGE
    plan = kql.compile(model, image.shape, patch=3, stride=2, score="logit")
    text = plan.explain()
    assert "Aten" not in text and "Upsample" in text and "zeros" in text
    assert_matches_oracle(plan.run(image, progress=False), model, image, patch=3, stride=2,
                          score="logit")  # fmt: skip
    cells = [0, 7]  # the relational form too
    sql = plan.sql_heatmap(image, positions=cells).reshape(-1)[cells]
    assert torch.allclose(sql, plan.run(image, progress=False).reshape(-1)[cells], atol=1e-5)


def test_a_negative_equivalent_padding_falls_back_exactly() -> None:
    model, image = _model(kernel_size=2, stride=3), IMAGE
    plan = kql.compile(model, image.shape, patch=3, stride=2, score="logit")
    assert "equivalent padding is negative" in plan.explain()
    assert_matches_oracle(plan.run(image, progress=False), model, image, patch=3, stride=2,
                          score="logit")  # fmt: skip
