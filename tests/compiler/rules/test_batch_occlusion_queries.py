from __future__ import annotations

import torch
from torch import nn

import krypton_ql as kql

torch.manual_seed(0)  # module-level weights: the same whatever was imported before
MODEL = nn.Sequential(
    nn.Conv2d(3, 8, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(8, 8, 3, padding=1),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(8, 2),
).eval()


def test_batch_size_follows_the_memory_budget() -> None:
    small = kql.compile(MODEL, (3, 16, 16), patch=4, memory_budget=10_000)
    large = kql.compile(MODEL, (3, 16, 16), patch=4, memory_budget=10_000_000)
    per_query = small.physical.batching.bytes_per_query
    assert small.physical.batching.batch_size == max(1, 10_000 // per_query)
    assert large.physical.batching.batch_size == len(large.positions)  # every query fits
    # conv1 box 6×6 (8 ch) and its 8×8 read window of conv2 (8 ch) are live together.
    assert per_query >= 4 * (8 * 36 + 8 * 64)


def test_every_batch_size_gives_the_same_heatmap() -> None:
    image = torch.randn(3, 16, 16)
    reference = kql.compile(MODEL, image.shape, patch=4, batch_size=1).run(image)
    for size in (3, 64, 1000):
        heatmap = kql.compile(MODEL, image.shape, patch=4, batch_size=size).run(image)
        assert torch.equal(torch.isnan(heatmap), torch.isnan(reference))
        assert float((heatmap - reference).abs().max()) <= 1e-6


def test_golden_physical_header() -> None:
    text = kql.explain(MODEL, (3, 16, 16), patch=4, stride=2, batch_size=10)
    assert "queries 49 (7×7 positions per image), batch size 10 → 5 batches" in text
