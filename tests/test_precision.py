"""Opt-in half precision: exact against naive re-inference in the same precision."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import krypton_ql as kql
from tests.helpers import KERNEL_DEVICE
from tests.strategies import Case, cnn_cases


@settings(max_examples=10)
@given(case=cnn_cases(dag=True))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_equals_naive_in_the_same_precision(precision: str, case: Case) -> None:
    options = dict(patch=case.patch, stride=case.stride, color=case.color, precision=precision)
    exact = kql.occlusion_heatmap(case.model, case.image, backend="torch", **options)
    naive = kql.naive_heatmap(case.model, case.image, **options)
    assert exact.dtype == naive.dtype == torch.float32  # scores are reported in fp32
    assert float((exact - naive).abs().max()) <= 1e-3
    assert next(case.model.parameters()).dtype == torch.float32  # the user's model is untouched


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
    options = dict(patch=3, stride=3, precision="fp16")
    exact = kql.occlusion_heatmap(model, image, backend="triton", **options)
    naive = kql.naive_heatmap(model, image, **options)
    assert float((exact - naive).abs().max()) <= 1e-3


def test_unknown_precision_is_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)).eval()
    with pytest.raises(kql.KryptonError, match="precision must be one of fp32, bf16, fp16"):
        kql.compile(model, (3, 2, 2), patch=1, precision="int8")
