"""The oracle itself: hand-computed cells, agreement with Captum (a third implementation of
the same windows), and no code shared with the engine."""

from __future__ import annotations

import ast
from pathlib import Path

import captum.attr
import pytest
import torch
from hypothesis import given, settings
from torch import nn

import krypton_ql as kql
from tests import oracle
from tests.profiles import examples
from tests.strategies import Case, cnn_cases


def _weighted_sum(height: int, width: int) -> nn.Module:
    """Logit 0 is ``Σ w[y, x]·image[y, x]`` with ``w[y, x] = 10·y + x``; logit 1 is 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(height * width, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0] = torch.tensor(
            [10.0 * y + x for y in range(height) for x in range(width)]
        )
    return model


# Cells computed by hand. An image of ones, colour 0: a window covering rows R and columns C
# (inside the image) takes Σ_{y∈R, x∈C} (10·y + x) = 10·|C|·ΣR + |R|·ΣC off Σ w.
HAND = [
    pytest.param(
        (6, 7), (3, 3), (2, 2),
        # Σ w = 10·7·15 + 6·21 = 1176. Rows start at 0, 2, 4 (ceil(3/2) + 1 = 3 windows); the
        # last covers rows 4–5 only (clipped): R = {0,1,2}, {2,3,4}, {4,5} → (|R|, ΣR) =
        # (3, 3), (3, 9), (2, 9). Columns start at 0, 2, 4: ΣC = 3, 9, 15, |C| = 3.
        [[1176 - 90 - 9, 1176 - 90 - 27, 1176 - 90 - 45],
         [1176 - 270 - 9, 1176 - 270 - 27, 1176 - 270 - 45],
         [1176 - 270 - 6, 1176 - 270 - 18, 1176 - 270 - 30]],
        id="clipped-last-row",
    ),
    pytest.param(
        (3, 7), (3, 2), (3, 3),
        # one row of windows; columns start at 0, 3, 6 (ceil(5/3) + 1 = 3), stride > patch, and
        # the last covers column 6 only. Σ w = 7·30 + 3·21 = 273.
        [[273 - (60 + 3 * 1), 273 - (60 + 3 * 7), 273 - (30 + 3 * 6)]],
        id="stride-over-patch-clipped",
    ),
    pytest.param(
        (2, 6), (1, 1), (2, 4),
        # rows start at 0 only (ceil(1/2) + 1 = 2, but row 2 is off the image: dropped);
        # columns at 0 and 4 (the third window, at 8, is dropped). Σ w = 6·10 + 2·15 = 90.
        [[90 - 0, 90 - 4]],
        id="windows-past-the-border-dropped",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("size", "patch", "stride", "cells"), HAND)
def test_hand_computed_cells(size, patch, stride, cells) -> None:
    model, image = _weighted_sum(*size), torch.ones(1, *size)
    expected = torch.tensor(cells, dtype=torch.float64)
    got = oracle.heatmap(model, image, patch, stride, target=0, score="logit")
    assert torch.equal(got, expected)
    for method in (kql.occlusion_heatmap, kql.naive_heatmap):
        heatmap = method(
            model, image, patch=patch, stride=stride, target=0, score="logit", progress=False
        )
        assert torch.allclose(heatmap.double(), expected, atol=1e-3), method.__name__


@settings(max_examples=examples(8))
@given(case=cnn_cases(dag=True, wide=False))
def test_the_oracle_agrees_with_captum(case: Case) -> None:
    """Captum's attributions from the oracle's scores: the mean over the windows covering each
    pixel of (clean − occluded) raw output."""
    channels, height, width = case.image.shape
    patch = case.patch
    stride = tuple(min(s, p) for s, p in zip(case.stride, patch))  # Captum: stride ≤ window
    target = 1
    outputs = oracle.run(case.model, case.image, patch, stride, case.color)
    drops = outputs.clean_scores(target, "logit")[0] - outputs.heatmap(target, "logit")[0]
    total = torch.zeros(height, width, dtype=torch.float64)
    count = torch.zeros(height, width, dtype=torch.float64)
    for i, top in enumerate(oracle.window_starts(height, patch[0], stride[0])):
        for j, left in enumerate(oracle.window_starts(width, patch[1], stride[1])):
            total[top : top + patch[0], left : left + patch[1]] += drops[i, j]
            count[top : top + patch[0], left : left + patch[1]] += 1
    colour = case.color
    baselines = colour if isinstance(colour, float) else torch.tensor(colour)[:, None, None]
    expected = captum.attr.Occlusion(case.model).attribute(
        case.image[None],
        sliding_window_shapes=(channels, *patch),
        strides=(channels, *stride),
        baselines=baselines,
        target=target,
    )[0]
    ours = (total / count).expand(channels, height, width)
    scale = max(1e-3, float(expected.abs().max()))
    assert float((ours - expected.double()).abs().max()) <= 1e-4 * scale


def test_the_oracle_imports_nothing_from_the_engine() -> None:
    tree = ast.parse(Path(oracle.__file__).read_text())
    imported = {
        alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names
    }
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    engine = {m for m in imported if m.split(".")[0] in ("krypton_ql", "compiler", "runtime")}
    assert not engine, f"the oracle shares code with the engine: {sorted(engine)}"
    assert imported <= {
        "__future__",
        "copy",
        "itertools",
        "math",
        "collections.abc",
        "dataclasses",
        "torch",
    }
