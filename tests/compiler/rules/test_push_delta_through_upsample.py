from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from compiler.ir import Upsample
from compiler.types import Size2
from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines

torch.manual_seed(0)  # module-level weights: the same whatever was imported before
MODEL = nn.Sequential(
    nn.Conv2d(2, 3, 3, padding=1),
    nn.Upsample(scale_factor=(2, 3), mode="nearest"),
    nn.Conv2d(3, 3, 3),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(3, 2),
).eval()
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
