"""Incremental heatmaps equal the independent oracle's on random CNNs (sequential and DAG)."""

from __future__ import annotations

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

import krypton_ql as kql
from tests.helpers import assert_exact, assert_matches_oracle
from tests.profiles import examples
from tests.strategies import Case, cnn_cases, pinned_cases

PINNED = pinned_cases()
STRATEGIES = st.sampled_from(["auto", "recompute", "delta"])


@settings(max_examples=examples(300))
@given(case=cnn_cases(), strategy=STRATEGIES)
@example(case=PINNED["pad"], strategy="auto")
@example(case=PINNED["sub"], strategy="delta")
@example(case=PINNED["avg_ceil"], strategy="recompute")
@example(case=PINNED["avg_ceil"], strategy="delta")
@example(case=PINNED["clipped"], strategy="auto")
@example(case=PINNED["negpool"], strategy="auto")
@example(case=PINNED["wide"], strategy="auto")
@example(case=PINNED["offset"], strategy="recompute")
@example(case=PINNED["offset"], strategy="delta")
@example(case=PINNED["affine"], strategy="auto")
@example(case=PINNED["gate"], strategy="auto")
@example(case=PINNED["channels_last"], strategy="auto")
@example(case=PINNED["shuffle"], strategy="delta")
@example(case=PINNED["fallback"], strategy="auto")
@example(case=PINNED["bilinear"], strategy="auto")
def test_incremental_equals_the_oracle_on_random_cnns(case: Case, strategy: str) -> None:
    plan = kql.compile(
        case.model,
        case.image.shape,
        patch=case.patch,
        stride=case.stride,
        color=case.color,
        linear_strategy=strategy,
    )
    exact = plan.run(case.image, progress=False)
    assert exact.shape == plan.grid
    assert_matches_oracle(
        exact, case.model, case.image, patch=case.patch, stride=case.stride, color=case.color
    )
    plan.optimized.plan.verify()


@settings(max_examples=examples(15))
@given(case=cnn_cases(dag=True))
@example(case=PINNED["sub"])
def test_logits_and_batches_of_images(case: Case) -> None:
    """Raw outputs match too, and an image batch gives one heatmap per image."""
    images = torch.stack([case.image, case.image.flip(-1), -case.image])
    assert_exact(case.model, images, patch=case.patch, stride=case.stride, color=case.color)


def test_small_batches_cover_every_query() -> None:
    """A batch size that does not divide the query count still fills every cell."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    image = torch.randn(3, 11, 13)
    exact = kql.occlusion_heatmap(model, image, patch=3, stride=2, batch_size=7, progress=False)
    naive = kql.naive_heatmap(model, image, patch=3, stride=2, batch_size=5, progress=False)
    assert not torch.isnan(exact).any()
    assert float((exact - naive).abs().max()) <= 1e-6
    assert_matches_oracle(exact, model, image, patch=3, stride=2, score="prob")
