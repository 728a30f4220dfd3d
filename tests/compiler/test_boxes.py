"""The update-box formulas cover exactly what changes: checked against perturbation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from compiler import boxes
from compiler.boxes import Positions
from compiler.types import Size2


@given(
    size=st.integers(4, 20),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    pad=st.integers(0, 2),
    ceil=st.booleans(),
    data=st.data(),
)
def test_window_box_contains_every_changed_output(
    size, kernel, stride, dilation, pad, ceil, data
) -> None:
    extent = dilation * (kernel - 1) + 1
    if size + 2 * pad < extent or pad > kernel // 2:
        return
    width = data.draw(st.integers(1, size))
    start = data.draw(st.integers(0, size - width))
    x = torch.randn(1, 1, 1, size, dtype=torch.float64)
    changed = x.clone()
    changed[..., start : start + width] += torch.rand(width, dtype=torch.float64) + 0.5

    def pool(t: torch.Tensor) -> torch.Tensor:  # a sum-pool: every input cell counts
        return (
            F.avg_pool2d(t, (1, kernel), (1, stride), (0, pad), ceil, True, 1)
            if dilation == 1
            else F.conv2d(
                t,
                torch.ones(1, 1, 1, kernel, dtype=t.dtype),
                stride=(1, stride),
                padding=(0, pad),
                dilation=(1, dilation),
            )
        )

    before, after = pool(x)[0, 0, 0], pool(changed)[0, 0, 0]
    out_dim = len(before)
    moved = torch.nonzero(before != after).flatten().tolist()
    out_size = boxes.window_size(width, extent, stride, out_dim)
    out_start = int(
        boxes.window_start(np.array([start]), extent, stride, pad, out_size, out_dim)[0]
    )
    assert out_start >= 0 and out_start + out_size <= out_dim
    assert all(out_start <= m < out_start + out_size for m in moved), (moved, out_start)


@given(
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    ph=st.integers(1, 30),
    pw=st.integers(1, 30),
    sy=st.integers(1, 7),
    sx=st.integers(1, 7),
)
def test_positions_follow_captum(h, w, ph, pw, sy, sx) -> None:
    """``ceil((D − P)/S) + 1`` windows per dimension (when the stride does not exceed the
    patch, as Captum requires), the first at 0, the last clipped; none starts off the image."""
    if ph > h or pw > w:
        return
    grid = Positions.grid(Size2(h, w), Size2(ph, pw), Size2(sy, sx))
    if sy <= ph:
        assert grid.rows == -(-(h - ph) // sy) + 1
        assert grid.top.max() + ph >= h  # the border is covered
    if sx <= pw:
        assert grid.cols == -(-(w - pw) // sx) + 1
        assert grid.left.max() + pw >= w
    assert len(grid) == grid.rows * grid.cols
    assert grid.top.min() == 0 and grid.left.min() == 0
    assert grid.top.max() < h and grid.left.max() < w  # every window covers some pixel
