"""Incremental heatmaps equal the naive loop on random CNNs (sequential and DAG)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import krypton_ql as kql
from tests.helpers import assert_exact
from tests.strategies import Case, cnn_cases


@settings(max_examples=150)
@given(case=cnn_cases(), strategy=st.sampled_from(["auto", "recompute", "delta"]))
def test_incremental_equals_naive_on_random_cnns(case: Case, strategy: str) -> None:
    plan = kql.compile(
        case.model,
        case.image.shape,
        patch=case.patch,
        stride=case.stride,
        color=case.color,
        linear_strategy=strategy,
    )
    exact = plan.run(case.image)
    naive = kql.naive_heatmap(
        case.model, case.image, patch=case.patch, stride=case.stride, color=case.color
    )
    assert exact.shape == naive.shape == plan.grid
    assert float((exact - naive).abs().max()) <= 1e-5
    plan.optimized.plan.verify()


@settings(max_examples=15)
@given(case=cnn_cases(dag=True))
def test_logits_and_batches_of_images(case: Case) -> None:
    """Raw outputs match too, and an image batch gives one heatmap per image."""
    import torch

    images = torch.stack([case.image, case.image.flip(-1), -case.image])
    assert_exact(case.model, images, patch=case.patch, stride=case.stride, color=case.color)


def test_small_batches_cover_every_query() -> None:
    """A batch size that does not divide the query count still fills every cell."""
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    image = torch.randn(3, 11, 13)
    exact = kql.occlusion_heatmap(model, image, patch=3, stride=2, batch_size=7)
    naive = kql.naive_heatmap(model, image, patch=3, stride=2, batch_size=5)
    assert not torch.isnan(exact).any()
    assert float((exact - naive).abs().max()) <= 1e-6
