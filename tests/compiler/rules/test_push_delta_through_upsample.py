from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler.ir import Upsample
from compiler.types import Size2
from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines


def _upsampling(mode: str) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Upsample(scale_factor=(2, 3), mode=mode),
        nn.Conv2d(3, 3, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    ).eval()


torch.manual_seed(0)  # module-level weights: the same whatever was imported before
MODEL, BILINEAR = _upsampling("nearest"), _upsampling("bilinear")
SHAPE = (2, 7, 6)


def test_golden_box_scales_by_the_factor() -> None:
    """A 5×5 box (3×3 patch, 3×3 kernel) becomes 10×15 after ×(2, 3)."""
    lines = rewritten_lines(MODEL, SHAPE, patch=3)
    assert "{elementwise box=10×15}" in lines[3] and "nearest ×2×3" in lines[3]
    assert fired(MODEL, SHAPE)["push_delta_through_upsample"] == 1


def test_equivalent_to_the_model() -> None:
    check_equivalence(MODEL, SHAPE)


def test_the_box_is_exactly_the_blocks_of_the_changed_cells() -> None:
    """Perturbing any input box changes exactly the ``s×s`` blocks of its cells: the rule's box
    (``s·b`` at ``s·y0``) is sound and tight."""
    op = Upsample(Size2(2, 3))
    x = torch.randn(1, 1, 7, 6)
    base = F.interpolate(x, scale_factor=(2, 3), mode="nearest")
    for y0, x0, bh, bw in itertools.product(range(7), range(6), (1, 2, 3), (1, 2)):
        if y0 + bh > 7 or x0 + bw > 6:
            continue
        changed = x.clone()
        changed[..., y0 : y0 + bh, x0 : x0 + bw] += 1.0
        moved = (F.interpolate(changed, scale_factor=(2, 3), mode="nearest") != base)[0, 0]
        rows, cols = moved.any(1).nonzero().flatten(), moved.any(0).nonzero().flatten()
        sh, sw = op.scale.h, op.scale.w
        assert (rows.min(), rows.max() + 1) == (sh * y0, sh * (y0 + bh))
        assert (cols.min(), cols.max() + 1) == (sw * x0, sw * (x0 + bw))


def test_golden_bilinear_box_and_read_window() -> None:
    """A 5×5 box becomes s·(b + 1) = 12×18 output cells, recomputed from 7×7 input cells."""
    lines = rewritten_lines(BILINEAR, SHAPE, patch=3)
    assert "{recompute box=12×18 read=7×6}" in lines[3] and "bilinear ×2×3" in lines[3]


def test_bilinear_equivalent_to_the_model() -> None:
    check_equivalence(BILINEAR, SHAPE)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_bilinear_box_holds_every_changed_cell(scale: int) -> None:
    """Against perturbation of every input box: every changed output row lies in the rule's
    ``s·(b + 1)`` rows from ``s·y0 − ⌊(s + 1)/2⌋`` (clamped inward); for ``s = 2`` away from the
    border the box is exactly the changed rows."""
    size, out = 9, 9 * scale
    x = torch.randn(1, 1, size, 1)
    base = F.interpolate(x, scale_factor=(scale, 1), mode="bilinear")
    for y0, b in itertools.product(range(size), (1, 2, 3)):
        if y0 + b > size:
            continue
        changed = x.clone()
        changed[..., y0 : y0 + b, :] += 1.0
        moved = F.interpolate(changed, scale_factor=(scale, 1), mode="bilinear") != base
        rows = moved[0, 0, :, 0].nonzero().flatten()
        length = min(scale * (b + 1), out)
        start = min(max(y0 * scale - (scale + 1) // 2, 0), out - length)
        assert start <= rows.min() and rows.max() < start + length, (y0, b)
        if scale == 2 and y0 > 0 and y0 + b < size:
            assert (rows.min(), rows.max() + 1) == (start, start + length)
