"""Helpers shared by tests: model calibration and the exact-vs-naive comparison."""

from __future__ import annotations

import torch
from torch import nn

import krypton_ql as kql


def calibrate(model: nn.Module, shape: tuple[int, ...], batches: int = 2) -> nn.Module:
    """Give batch norms realistic running statistics (random weights otherwise blow up the
    activations), then switch to eval mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(4, *shape))
    return model.eval()


def assert_exact(model: nn.Module, image: torch.Tensor, **options) -> None:
    """The incremental heatmap equals naive re-inference: probabilities within 1e-5, raw
    outputs within 1e-4 of their scale. (Deep fp32 networks reorder reductions: naive
    re-inference itself moves Inception3's logits by ~5e-5 of their scale between batch sizes.)
    """
    for score, tolerance in (("prob", 1e-5), ("logit", 1e-4)):
        exact = kql.occlusion_heatmap(model, image, score=score, **options)
        naive = kql.naive_heatmap(model, image, score=score, **options)
        scale = max(1.0, float(naive.abs().max())) if score == "logit" else 1.0
        difference = float((exact - naive).abs().max())
        assert difference <= tolerance * scale, f"{score}: max |Δ| = {difference:.3g}"
        assert exact.shape == naive.shape


def small_cnn() -> nn.Module:
    """Conv, ReLU, max pool, conv, global pool, linear: 4 classes, fast on any image size."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()


# Where Triton kernels run in tests: compiled on a GPU when there is one, else in Triton's
# interpreter on CPU tensors (tests/conftest.py switches it on).
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
