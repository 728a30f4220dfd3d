"""Real architectures from torchvision (random weights, calibrated batch norms, a classifier
scaled so that occlusion moves the scores): exact against the independent oracle, and the
paper's theoretical speedups."""

from __future__ import annotations

import pytest
import torch
import torchvision

import krypton_ql as kql
from tests.helpers import assert_exact, calibrate, responsive

pytestmark = pytest.mark.slow  # full torchvision architectures


def _inception() -> torch.nn.Module:
    return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)


@pytest.mark.parametrize(
    ("build", "size", "patch", "stride"),
    [
        (torchvision.models.vgg16, (64, 72), 16, 12),
        (torchvision.models.resnet18, (96, 88), 16, 10),
        (_inception, (80, 84), 16, 14),
    ],
    ids=["vgg16", "resnet18", "inception3"],
)
def test_exact_equals_the_oracle(build, size: tuple[int, int], patch: int, stride: int) -> None:
    image = torch.randn(3, *size)
    model = responsive(calibrate(build(), (3, *size)), image)
    assert_exact(model, image, patch=patch, stride=stride, color=0.5)


@pytest.mark.parametrize(
    ("build", "size", "expected", "tolerance"),
    [
        (torchvision.models.vgg16, 224, 6.52, 0.02),
        (torchvision.models.resnet18, 224, 2.19, 0.02),
        # True bounding boxes at Inception's concats; the paper's static analysis took the
        # last branch's box, which under-counts the pool branch and gave 2.27 (research §2.6).
        (_inception, 299, 1.80, 0.02),
    ],
    ids=["vgg16", "resnet18", "inception3"],
)
def test_theoretical_speedup_reproduces_the_paper(build, size, expected, tolerance) -> None:
    plan = kql.compile(build().eval(), (3, size, size), patch=16, stride=4, batch_size=1)
    assert plan.theoretical_speedup == pytest.approx(expected, rel=tolerance)


def test_theoretical_speedup_falls_with_patch_size_as_in_the_paper() -> None:
    """VGG16 at patch 4 / 8 / 32 (research §2.8: 8.59, 7.85, 5.04)."""
    model = torchvision.models.vgg16().eval()
    speedups = [
        kql.compile(model, (3, 224, 224), patch=p, batch_size=1).theoretical_speedup
        for p in (4, 8, 32)
    ]
    assert speedups == pytest.approx([8.59, 7.85, 5.04], rel=0.02)
