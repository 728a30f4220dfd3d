"""A dense head (``Linear(flatten(map))``) maintained over its input box's columns: golden
lines, the cost choice, the independent oracle in 1-D, 2-D and 3-D, image batches and a
per-pixel baseline, the plan as SQL, and an in-place weight change."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import krypton_ql as kql
from benchmarks.dense_head import head_model
from compiler.physical import KernelId
from tests import oracle
from tests.compiler.rules.rule_checks import check_equivalence, fired, rewritten_lines
from tests.helpers import assert_matches_oracle, responsive


def _head(*size: int) -> nn.Module:
    """Two convolutions and a pool, then a dense head on the flattened map."""
    d = len(size)
    conv, pool = (
        (nn.Conv1d, nn.Conv2d, nn.Conv3d)[d - 1],
        (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[d - 1],
    )
    cells = math.prod(n // 2 for n in size)
    torch.manual_seed(d)
    return nn.Sequential(
        conv(2, 6, 3, padding=1), nn.ReLU(), pool(2), conv(6, 5, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(5 * cells, 12), nn.ReLU(), nn.Linear(12, 4),
    ).eval()  # fmt: skip


MODEL, SHAPE = _head(16, 16), (2, 16, 16)


def _kernels(plan: kql.OcclusionPlan) -> list[KernelId]:
    return [step.kernel for step in plan.physical.steps]


def test_golden_the_dense_head_reads_the_box_not_a_projection() -> None:
    lines = rewritten_lines(MODEL, SHAPE, patch=2, stride=1, linear_strategy="delta")
    head = next(line for line in lines if "Linear" in line and "320→12" in line)
    assert "{delta}" in head and "Flatten" not in "".join(lines)
    assert not any("Project" in line for line in lines)
    assert (
        fired(MODEL, SHAPE, patch=2, stride=1, linear_strategy="delta")[
            "push_delta_through_dense_head"
        ]
        == 1
    )


def test_equivalent_to_the_model() -> None:
    check_equivalence(MODEL, SHAPE, examples=15, linear_strategy="delta")


@pytest.mark.parametrize(
    "size, patch", [((64,), (3,)), ((16, 16), (2, 2)), ((4, 16, 16), (1, 2, 2))], ids=str
)
def test_each_rank_equals_the_oracle_and_the_recomputed_head(
    size: tuple[int, ...], patch: tuple[int, ...]
) -> None:
    image = torch.randn(2, 2, *size)
    model = responsive(_head(*size), image, spatial_dims=len(size), spread=4.0)
    options = dict(patch=patch, stride=1, score="logit")
    plan = kql.compile(model, image.shape[1:], linear_strategy="delta", **options)
    assert KernelId.DELTA_LINEAR in _kernels(plan) and KernelId.PROJECT not in _kernels(plan)
    got = plan.run(image, progress=False)
    assert_matches_oracle(got, model, image, **options)
    full = kql.compile(model, image.shape[1:], linear_strategy="recompute", **options)
    assert KernelId.DELTA_LINEAR not in _kernels(full)
    assert torch.allclose(got, full.run(image, progress=False), atol=1e-5)


def test_a_per_pixel_baseline_and_probabilities() -> None:
    image = torch.randn(2, 16, 16)
    model = responsive(MODEL, image, spread=4.0)
    baseline = torch.randn(2, 16, 16)
    plan = kql.compile(model, SHAPE, patch=3, stride=1, linear_strategy="delta")
    assert KernelId.DELTA_LINEAR in _kernels(plan)
    got = plan.run(image, fill=kql.Fill.per_pixel(baseline), progress=False)
    expected = oracle.run(model, image, 3, 1, content=oracle.Content(baseline=baseline))
    truth = expected.heatmap(None, "prob")[0]
    assert float((got.double() - truth).abs().max()) < 1e-5
    assert float(truth.max() - truth.min()) > 1e-2  # the occlusion matters


def test_the_plan_as_sql_maintains_the_head_by_its_delta() -> None:
    image = torch.randn(2, 16, 16)
    model = responsive(MODEL, image, spread=4.0)
    plan = kql.compile(model, SHAPE, patch=2, stride=1, score="logit", linear_strategy="delta")
    assert KernelId.DELTA_LINEAR in _kernels(plan)
    assert "SUM(w.v * (au.v - av.v))" in plan.explain(sql=True)
    chosen = [0, 14, 16, 112, 224]  # corners, an edge, the centre
    sql = plan.sql_heatmap(image, positions=chosen).reshape(-1)[chosen]
    torch_ = plan.run(image, progress=False).reshape(-1)[chosen]
    assert torch.allclose(sql.double(), torch_.double(), atol=1e-5)


def test_the_cost_model_chooses_the_delta_on_dense_grids_of_small_boxes() -> None:
    """The delta form pays when many queries share each box origin and the box is small
    against the map (the geometry ``benchmarks/dense_head.py`` measured): a 64 px input at
    stride 1 (3,249 queries, 100 origins), not at stride 2 (841 queries), nor when the box
    covers the map; forced, it is exact there too."""
    model = head_model(64)
    dense = kql.compile(model, (3, 64, 64), patch=8, stride=1)
    assert KernelId.DELTA_LINEAR in _kernels(dense)
    assert KernelId.DELTA_LINEAR not in _kernels(kql.compile(model, (3, 64, 64), patch=8, stride=2))
    image = torch.randn(2, 16, 16)
    model = responsive(MODEL, image, spread=4.0)
    assert KernelId.DELTA_LINEAR not in _kernels(kql.compile(model, SHAPE, patch=12, stride=1))
    forced = kql.compile(model, SHAPE, patch=12, stride=4, score="logit", linear_strategy="delta")
    assert KernelId.DELTA_LINEAR in _kernels(forced)
    got = forced.run(image, progress=False)
    assert_matches_oracle(got, model, image, patch=12, stride=4, score="logit")


def test_an_in_place_weight_change_reaches_the_head() -> None:
    image = torch.randn(2, 16, 16)
    model = responsive(_head(16, 16), image, spread=4.0)
    plan = kql.compile(model, SHAPE, patch=2, stride=1, score="logit", linear_strategy="delta")
    before = plan.run(image, progress=False)
    with torch.no_grad():
        model[6].weight.mul_(-1.5)  # the head's cell-major weight must be laid out again
    after = plan.run(image, progress=False)
    assert not torch.allclose(before, after, atol=1e-3)
    assert_matches_oracle(after, model, image, patch=2, stride=1, score="logit")
