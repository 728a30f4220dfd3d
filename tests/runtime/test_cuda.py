"""Both backends on a GPU (skipped without CUDA): the Triton backend's compiled kernels and the
torch reference equal naive re-inference on the benchmark models and on random DAG CNNs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings

import krypton_ql as kql
from krypton_ql import models
from tests.helpers import calibrate
from tests.strategies import Case, cnn_cases

pytestmark = pytest.mark.gpu

# TF32 convolutions (torch's default on the GPU) reorder sums more than fp32 on the CPU.
TOLERANCE = 1e-3


def _zoo(name: str) -> tuple[torch.nn.Module, int]:
    if name == "efficientnet_lite0":
        return models.efficientnet_lite0(), 224
    if name == "inception_v3":
        build = torchvision.models.inception_v3(init_weights=True, aux_logits=False)
        return calibrate(build, (3, 299, 299)), 299
    return calibrate(getattr(torchvision.models, name)(), (3, 224, 224)), 224


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "inception_v3", "efficientnet_lite0"])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_exact_equals_naive_on_the_benchmark_models(name: str, backend: str) -> None:
    model, size = _zoo(name)
    model = model.cuda()
    image = torch.randn(3, size, size, device="cuda")
    plan = kql.compile(model, image.shape, patch=16, stride=16, backend=backend)
    exact = plan.run(image)
    naive = kql.naive_heatmap(model, image, patch=16, stride=16)
    assert exact.device.type == "cuda"
    assert float((exact - naive).abs().max()) <= TOLERANCE


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_on_the_gpu(precision: str) -> None:
    model, size = _zoo("resnet18")
    image = torch.randn(3, size, size, device="cuda")
    options = dict(patch=16, stride=16, precision=precision)
    exact = kql.occlusion_heatmap(model.cuda(), image, backend="triton", **options)
    naive = kql.naive_heatmap(model.cuda(), image, **options)
    assert float((exact - naive).abs().max()) <= 1e-3


@settings(max_examples=30, deadline=None)
@given(case=cnn_cases(dag=True))
def test_triton_backend_on_random_dag_cnns(case: Case) -> None:
    model, image = case.model.cuda(), case.image.cuda()
    options = dict(patch=case.patch, stride=case.stride, color=case.color)
    for conv in ("triton", "cudnn"):
        plan = kql.compile(model, image.shape, backend="triton", conv=conv, **options)
        exact = plan.run(image)
        naive = kql.naive_heatmap(model, image, **options)
        assert float((exact - naive).abs().max()) <= TOLERANCE


def test_peak_memory_no_higher_than_naive_at_the_same_batch() -> None:
    model, size = _zoo("resnet18")
    model = model.cuda()
    image = torch.randn(3, size, size, device="cuda")
    peaks = {}
    for name, run in {
        "naive": lambda: kql.naive_heatmap(model, image, patch=16, stride=8, batch_size=128),
        "exact": lambda: kql.occlusion_heatmap(model, image, patch=16, stride=8, batch_size=128),
    }.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - base
    assert peaks["exact"] <= peaks["naive"], peaks
