"""The incremental plan runs as SQL: DuckDB, reading the clean views, the weights, the
queries and their box origins as tables, computes the heatmap that torch and naive
re-inference compute — for every update form the rewrite rules choose."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import krypton_ql as kql
from compiler import relational
from compiler.errors import UnsupportedOperationError
from tests.helpers import assert_matches_oracle, small_cnn
from tests.profiles import examples
from tests.strategies import cnn_cases

# Block kinds whose every operator has a relational form (not: layer norms, channel
# shuffles and slices, ATen fallbacks).
RELATIONAL = ("conv", "pool", "bn", "act", "pad", "negpool", "depthwise", "residual",
              "inception", "se", "branches", "offset", "scale", "gate", "upsample")  # fmt: skip


@settings(
    max_examples=examples(20),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cnn_cases(wide=False, kinds=RELATIONAL), data=st.data())
def test_the_plan_as_sql_equals_torch_and_naive_re_inference(case, data) -> None:
    shape = tuple(case.image.shape)
    plan = kql.compile(case.model, shape, patch=case.patch, stride=case.stride, color=case.color)
    count = len(plan.positions)
    chosen = sorted(data.draw(st.sets(st.integers(0, count - 1), min_size=1, max_size=12)))
    got = plan.sql_heatmap(case.image, positions=chosen)
    cells = torch.tensor(chosen)
    assert got.reshape(-1)[cells].isfinite().all() and got.isnan().sum() == count - len(chosen)
    torch_heatmap = plan.run(case.image, progress=False).reshape(-1)[cells]
    assert torch.allclose(got.reshape(-1)[cells], torch_heatmap, rtol=1e-4, atol=1e-6)
    assert_matches_oracle(
        got, case.model, case.image, patch=case.patch, stride=case.stride, color=case.color,
        cells=cells,
    )  # fmt: skip


@pytest.mark.parametrize(
    "linear",
    [
        pytest.param("delta", id="delta"),
        pytest.param("recompute", id="recompute"),
    ],
)
def test_both_linear_forms_run_as_sql(linear) -> None:
    """A convolution after the first one is maintained by its delta (view + K·Δ) or
    recomputed over Window(view ⊕ patch), as the compile option says."""
    torch.manual_seed(3)
    model, image = small_cnn(), torch.randn(3, 12, 12)
    plan = kql.compile(model, (3, 12, 12), patch=3, stride=3, linear_strategy=linear)
    forms = [s.form.split()[0] for s in relational.render(plan.optimized.plan)]
    assert ("delta" in forms[1:-3]) == (linear == "delta"), forms
    assert_matches_oracle(plan.sql_heatmap(image), model, image, patch=3, stride=3)


def test_explain_prints_the_plan_as_sql() -> None:
    plan = kql.compile(small_cnn(), (3, 12, 12), patch=3, stride=3)
    text = plan.explain(sql=True)
    section = text.split("== relational (the incremental plan as SQL) ==\n")[1]
    statements = relational.render(plan.optimized.plan)
    for statement in statements:
        assert f"CREATE TABLE u{statement.index} AS {statement.sql};" in section
    assert "COALESCE(au.v, av.v)" in section  # a consumer reads view ⊕ patch
    assert "SUM(au.v - av.v) / 36.0" in section  # the global pool's delta over a 6×6 map


def test_an_operator_without_a_relational_form_is_named() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4, 2),
    ).eval()  # fmt: skip
    plan = kql.compile(model, (3, 8, 8), patch=2, stride=2)
    with pytest.raises(UnsupportedOperationError, match="has no relational form"):
        plan.sql_heatmap(torch.randn(3, 8, 8))
    assert "(no relational form:" in plan.explain(sql=True)


def test_a_region_aggregate_runs_as_sql() -> None:
    """A map's masked mean (a segmentation region score's form): its delta over each box,
    joined with the weights relation, equals torch and naive re-inference."""

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.register_buffer("mask", (torch.rand(3, 9, 8) > 0.4).float())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.conv(x).relu() * self.mask).mean((2, 3))

    torch.manual_seed(5)
    model, image = Masked().eval(), torch.randn(3, 9, 8)
    plan = kql.compile(model, (3, 9, 8), patch=3, stride=2, score="logit")
    forms = {s.node: s.form for s in relational.render(plan.optimized.plan)}
    assert forms[plan.optimized.plan.output] == "delta"
    got = plan.sql_heatmap(image)
    assert torch.allclose(got, plan.run(image, progress=False), rtol=1e-4, atol=1e-6)
    assert_matches_oracle(got, model, image, patch=3, stride=2, score="logit")
