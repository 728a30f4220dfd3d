from __future__ import annotations

import torch
from torch import nn

from tests.compiler.rules.rule_checks import check_equivalence, rewritten_lines

torch.manual_seed(0)  # module-level weights: the same whatever was imported before
MODEL = nn.Sequential(nn.Flatten(), nn.Linear(2 * 7 * 9, 3)).eval()
SHAPE = (2, 7, 9)


def test_golden_patch_box() -> None:
    lines = rewritten_lines(MODEL, SHAPE, patch=(2, 4))
    assert "{occlude box=2×4}" in lines[1]


def test_clipped_windows_at_the_border() -> None:
    """Stride 4 over 9 columns with a 4-wide patch: the last window is clipped to 1 column."""
    check_equivalence(MODEL, SHAPE, examples=10)
