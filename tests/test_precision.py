"""Opt-in half precision: as close to the independent oracle in the same precision as that
precision's own rounding allows, on workloads where occlusion moves the scores well beyond it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

import krypton_ql as kql
from tests.helpers import KERNEL_DEVICE, assert_matches_oracle
from tests.profiles import examples
from tests.strategies import Case, cnn_cases


@settings(max_examples=examples(10))
@given(case=cnn_cases(dag=True))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_equals_the_oracle_in_the_same_precision(precision: str, case: Case) -> None:
    """Raw outputs (which occlusion moves far more than probabilities): within a tenth of the
    movement, on draws where the movement is 20× the precision's rounding of the heatmap."""
    options = dict(patch=case.patch, stride=case.stride, color=case.color)
    exact = kql.occlusion_heatmap(
        case.model, case.image, backend="torch", precision=precision, score="logit",
        progress=False, **options,
    )  # fmt: skip
    assert exact.dtype == torch.float32  # scores are reported in fp32
    assert_matches_oracle(
        exact, case.model, case.image, score="logit", precision=precision, **options
    )
    assert next(case.model.parameters()).dtype == torch.float32  # the user's model is untouched


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_delta_forms(precision: str) -> None:
    """The delta form gathers ``0 ⊕ Δ`` windows: they must stay in the model's precision."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.AvgPool2d(3, 2, 1),
        torch.nn.Conv2d(6, 6, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(6, 4),
    ).eval()  # fmt: skip
    image = torch.randn(3, 14, 13) * 2
    options = dict(patch=4, stride=3, score="logit", precision=precision)
    plan = kql.compile(model, image.shape, linear_strategy="delta", backend="torch", **options)
    assert "{delta" in plan.explain()
    assert_matches_oracle(plan.run(image, progress=False), model, image, **options)


def test_naive_runs_in_the_same_precision() -> None:
    """``naive_heatmap(precision=…)`` is the baseline the README promises: the oracle's
    heatmap in that precision, not in fp32."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5),
    ).eval()  # fmt: skip
    image = torch.randn(3, 12, 12) * 3
    options = dict(patch=4, stride=4, score="logit")
    naive = kql.naive_heatmap(model, image, precision="bf16", progress=False, **options)
    assert_matches_oracle(naive, model, image, precision="bf16", **options)
    fp32 = kql.naive_heatmap(model, image, progress=False, **options)
    assert float((naive - fp32).abs().max()) > 1e-4  # it did round to bf16


def test_fp16_through_the_triton_kernels() -> None:
    torch.manual_seed(0)
    model = (
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(4, 4, 3),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(4, 3),
        )
        .eval()
        .to(KERNEL_DEVICE)
    )
    image = torch.randn(3, 10, 10, device=KERNEL_DEVICE)
    options = dict(patch=3, stride=3, precision="fp16", score="logit")
    exact = kql.occlusion_heatmap(model, image, backend="triton", progress=False, **options)
    assert_matches_oracle(exact.cpu(), model.cpu(), image.cpu(), **options)


def test_unknown_precision_is_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)).eval()
    with pytest.raises(kql.KryptonError, match="precision must be one of fp32, bf16, fp16"):
        kql.compile(model, (3, 2, 2), patch=1, precision="int8")


def test_the_query_language_runs_in_the_precision_asked() -> None:
    """``precision => 'bf16'`` is the API's ``precision="bf16"``: same rounding, same map."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3)
    ).eval()
    image = torch.randn(3, 8, 8)
    session = kql.connect()
    session.register_model("cnn", model)
    session.register_images("scans", image[None])
    query = "SELECT heatmap(prob) FROM occlusion(scans, cnn, patch => 3, precision => '{}')"
    bf16 = np.asarray(session.sql(query.format("bf16")).heatmaps[0])
    fp32 = np.asarray(session.sql(query.format("fp32")).heatmaps[0])
    direct = kql.occlusion_heatmap(model, image, patch=3, precision="bf16", progress=False)
    assert np.array_equal(bf16, direct.numpy())
    assert float(np.abs(bf16 - fp32).max()) > 1e-4  # it did round to bf16
