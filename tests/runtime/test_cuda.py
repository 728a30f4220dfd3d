"""The torch reference backend on CUDA tensors (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import krypton_ql as kql
from tests.helpers import calibrate

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("build", [torchvision.models.resnet18, torchvision.models.vgg16])
def test_exact_equals_naive_on_cuda(build) -> None:
    model = calibrate(build(), (3, 96, 96)).cuda()
    image = torch.randn(3, 96, 96, device="cuda")
    exact = kql.occlusion_heatmap(model, image, patch=16, stride=8)
    naive = kql.naive_heatmap(model, image, patch=16, stride=8)
    assert exact.device.type == "cuda"
    assert float((exact - naive).abs().max()) <= 1e-3  # TF32 reorders more than fp32 on CPU
