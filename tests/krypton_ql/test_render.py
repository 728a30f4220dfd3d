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
