"""The Triton backend end to end (in the interpreter on CPU): exact heatmaps."""

from __future__ import annotations

import torch
from torch import nn

import krypton_ql as kql


def test_triton_backend_equals_naive() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, groups=2, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    image = torch.randn(3, 11, 10)
    plan = kql.compile(model, image.shape, patch=3, stride=4, backend="triton")
    assert "\nbackend: triton (gather_conv2d); torch reference for the other operators\n" in (
        plan.explain()
    )
    exact = plan.run(image)
    naive = kql.naive_heatmap(model, image, patch=3, stride=4)
    assert float((exact - naive).abs().max()) <= 1e-5


def test_auto_is_the_reference_on_cpu() -> None:
    plan = kql.compile(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval(), (3, 2, 2), patch=1)
    assert "\nbackend: torch reference\n" in plan.explain()
