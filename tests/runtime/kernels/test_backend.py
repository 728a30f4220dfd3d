"""The Triton backend end to end (in the interpreter on CPU): exact heatmaps on random CNNs
(channel counts above one tile included), with fused epilogues, every gather kernel and both
convolution implementations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from torch import nn

import krypton_ql as kql
from runtime.measure import ConvChoice
from tests.helpers import KERNEL_DEVICE, assert_matches_oracle
from tests.profiles import examples
from tests.strategies import Case, cnn_cases, pinned_cases

PINNED = pinned_cases()


@pytest.mark.slow
@settings(max_examples=examples(8))
@given(case=cnn_cases(dag=True))
@example(case=PINNED["wide"])
@example(case=PINNED["pad"])
@example(case=PINNED["gate"])
@example(case=PINNED["offset"])
def test_triton_backend_equals_the_oracle_on_random_cnns(case: Case) -> None:
    model, image = case.model.to(KERNEL_DEVICE), case.image.to(KERNEL_DEVICE)
    options = dict(patch=case.patch, stride=case.stride, color=case.color)
    plan = kql.compile(model, image.shape, backend="triton", **options)
    rows, cols = plan.grid
    # The interpreter is slow: a spread of positions, border ones included.
    chosen = torch.unique(torch.linspace(0, rows * cols - 1, 7).round().long())
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # exact fp32 on a GPU
        exact = plan.evaluate(image, positions=chosen.to(KERNEL_DEVICE)).heatmaps[0, 0]
    assert_matches_oracle(exact.cpu(), model.cpu(), case.image, cells=chosen, **options)


@pytest.mark.parametrize("conv", ["triton", "cudnn", "measure"])
def test_each_convolution_implementation(conv: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Hardswish(),
        nn.Conv2d(4, 4, 3, stride=2, groups=2, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    model.to(KERNEL_DEVICE)
    image = torch.randn(3, 11, 10, device=KERNEL_DEVICE)
    plan = kql.compile(model, image.shape, patch=3, stride=4, backend="triton", conv=conv)
    text = plan.explain()
    assert "\nbackend: triton (gather_conv, gather_pool" in text
    assert "gather_conv        0 → 1 → 2 buffer=" in text  # conv + BN + hardswish fused
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # exact fp32 on a GPU
        exact = plan.run(image, progress=False)
    assert_matches_oracle(exact.cpu(), model.cpu(), image.cpu(), patch=3, stride=4)
    if conv == "measure" and KERNEL_DEVICE != "cpu":
        assert set(plan.runner.choices.values()) <= {ConvChoice.TRITON, ConvChoice.CUDNN}
        return
    ran = "triton" if conv == "measure" else conv  # the interpreter never measures
    assert plan.runner.choices == {"0": ConvChoice(ran), "3": ConvChoice(ran)}
    assert f"ran={ran}" in plan.explain()


def test_auto_is_the_reference_on_cpu() -> None:
    plan = kql.compile(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval(), (3, 2, 2), patch=1)
    assert "\nbackend: torch reference\n" in plan.explain()


def test_unknown_conv_choice_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    with pytest.raises(kql.KryptonError, match="conv must be 'measure', 'triton' or 'cudnn'"):
        kql.compile(model, (3, 2, 2), patch=1, backend="triton", conv="fastest")


@pytest.mark.skipif(KERNEL_DEVICE != "cpu", reason="kernels compiled for the GPU here")
def test_triton_on_cpu_without_the_interpreter_is_explained(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    with pytest.raises(kql.KryptonError, match="set TRITON_INTERPRET=1 in the environment"):
        kql.compile(model, (3, 2, 2), patch=1, backend="triton")


def test_approximate_plans_run_on_the_triton_backend() -> None:
    """τ moves box origins (a centre crop); the fused kernels read them like exact ones."""
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        )
        .eval()
        .to(KERNEL_DEVICE)
    )
    image = torch.randn(3, 16, 16, device=KERNEL_DEVICE)
    options = dict(patch=5, stride=3, tau=0.3)
    fused = kql.compile(model, image.shape, backend="triton", **options)
    assert "≈" in fused.explain()
    reference = kql.compile(model, image.shape, backend="torch", **options)
    tolerance = 1e-5 if KERNEL_DEVICE == "cpu" else 1e-3
    assert float((fused.run(image) - reference.run(image)).abs().max()) <= tolerance
