"""Heatmap pictures: the overlay puts each cell at its patch's centre."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from krypton_ql.render import overlay_png


def test_overlay_marks_the_dropped_region(tmp_path) -> None:
    photo = torch.full((3, 64, 64), 0.5)
    heatmap = torch.full((13, 13), 0.8)
    heatmap[10:, 10:] = 0.6  # patches at rows/cols 40+ (centres 48+) hurt the prediction
    path = overlay_png(tmp_path / "x.png", photo, heatmap, 0.8, "test", (16, 16), (4, 4))
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    height, width = picture.shape[:2]
    right = picture[:, width // 2 :]
    reddish = (right[..., 0] - right[..., 2]) > 80
    rows, cols = np.nonzero(reddish)
    assert len(rows) > 0
    # The red region sits in the lower-right part of the overlay panel.
    assert rows.mean() > height * 0.55 and cols.mean() > right.shape[1] * 0.45


def test_the_plan_picture_draws_the_plans_boxes_and_costs(tmp_path) -> None:
    """What plan_png draws is the plan's: every boxed layer's box at the middle query's
    origin, and per-layer FMAs that add up to the plan's naive and incremental cost (a chain
    without joins, whose boxes do not depend on which queries share the plan)."""
    import krypton_ql as kql
    from krypton_ql.render import plan_layers
    from tests.helpers import small_cnn

    plan = kql.compile(small_cnn(), (3, 32, 32), patch=8, stride=4, tau=0.3)
    layers = plan_layers(plan)
    rows, cols = plan.grid
    middle = (rows // 2) * cols + cols // 2
    boxed = {n.name: n for n in plan.optimized.plan if n.name in plan.optimized.origins}
    drawn = [layer for layer in layers if layer.window and layer.box is not None]
    windows = [n for n in boxed.values() if type(n.op).__name__ in ("JoinAggregate", "Pool")]
    assert len(drawn) == len(windows) >= 3
    for layer, node in zip(drawn, windows):
        y, x = (int(o[middle]) for o in plan.optimized.origins[node.name])
        assert layer.box == (y, x, node.update.box.h, node.update.box.w)
        assert layer.cut == (node.update.cut is not None)
    assert any(layer.cut for layer in drawn)  # τ = 0.3 cut a box, and the picture says so
    cost = plan.centre_cost
    assert sum(layer.naive_fma for layer in layers) == cost.naive.fma
    assert sum(layer.incremental_fma for layer in layers) == cost.incremental.fma
    path = plan.explain_png(tmp_path / "plan.png")
    assert Image.open(path).size[0] >= 1000
