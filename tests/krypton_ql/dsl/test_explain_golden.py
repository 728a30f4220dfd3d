"""A golden EXPLAIN of a query: pushdowns first, then the plan."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

import krypton_ql as kql

GOLDEN = Path(__file__).parents[2] / "golden" / "query_explain.txt"


def test_golden_query_explain() -> None:
    torch.manual_seed(0)
    session = kql.connect()
    session.register_model(
        "cnn",
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        ).eval(),
    )
    session.register_images("scans", torch.randn(2, 3, 16, 14))
    text = session.explain(
        "SELECT y, x, drop FROM occlusion(scans, cnn, patch => 4, stride => 2, batch_size => 16)"
        " WHERE image = '1' AND class IN (0, 2) AND y BETWEEN 2 AND 8 ORDER BY drop DESC LIMIT 5"
    )
    if os.environ.get("KRYPTON_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
