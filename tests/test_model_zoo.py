"""The model zoo practitioners have — every torchvision classifier and a broad sample of timm's
CNN families (random weights, calibrated batch norms, a classifier scaled so that occlusion
moves the scores) — imported through ``torch.export`` with no model-specific code, each exact
against the independent oracle. A representative set runs in the fast suite, a wider one is
``slow`` (CI), and the whole zoo is marked ``zoo`` (``make zoo``, about 15 minutes; not in
``make test``)."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import krypton_ql as kql
from compiler import ir
from tests.helpers import assert_matches_oracle, calibrate, responsive


def _exact(model: nn.Module, size: int, *, patch: int | None = None) -> kql.OcclusionPlan:
    """Compile, run on a random image (a 4×4 grid of positions) and compare with the oracle;
    ``naive_heatmap`` (the baseline users compare with) must agree with the oracle too."""
    torch.manual_seed(0)
    image = torch.randn(3, size, size)
    model = responsive(calibrate(model, (3, size, size)), image)
    patch = patch or size // 4
    options = dict(patch=patch, stride=patch, score="logit")
    plan = kql.compile(model, (3, size, size), **options)
    assert_matches_oracle(plan.run(image, progress=False), model, image, **options)
    naive = kql.naive_heatmap(model, image, progress=False, **options)
    assert_matches_oracle(naive, model, image, **options)
    return plan


def _kinds(plan: kql.OcclusionPlan) -> set[type]:
    return {type(node.op) for node in plan.logical}


def _fallbacks(plan: kql.OcclusionPlan) -> list[str]:
    return [node.op.name for node in plan.logical if isinstance(node.op, ir.Aten)]


# -- torchvision ----------------------------------------------------------------------------


def test_shufflenet_channel_split_and_shuffle_stay_local() -> None:
    """``x.chunk(2, dim=1)`` and ``view → transpose → view`` are per-position operators."""
    plan = _exact(torchvision.models.shufflenet_v2_x0_5(), 64)
    assert ir.Pointwise in _kinds(plan) and not _fallbacks(plan)
    assert plan.theoretical_speedup > 1.1


def test_convnext_blocks_stay_local() -> None:
    """``permute → LayerNorm → Linear → GELU → Linear → permute`` and LayerNorm2d: local, with
    the per-position linear layers counted in the cost."""
    model = torchvision.models.convnext_tiny()
    plan = _exact(model, 64, patch=8)
    assert not _fallbacks(plan) and ir.Pointwise in _kinds(plan)
    # 7×7 depthwise kernels spread the box fast: 1.26× at 224 px, patch 16 (measured).
    full = kql.compile(model, (3, 224, 224), patch=16, stride=16)
    assert full.theoretical_speedup == pytest.approx(1.26, abs=0.01)


def test_a_small_vision_transformer_is_exact_through_the_fallback() -> None:
    """Patch embedding local; from the token reshape on, the exact fallback runs the model's
    own attention on full tensors."""
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    plan = _exact(model, 32)
    names = " ".join(_fallbacks(plan))
    assert "aten.scaled_dot_product_attention" in names or "aten.matmul" in names
    assert ir.JoinAggregate in _kinds(plan)  # the patch embedding


TORCHVISION_CI = ["regnet_y_400mf", "mnasnet0_5", "resnext50_32x4d"]
TORCHVISION_SLOW = [
    "mobilenet_v2",
    "mobilenet_v3_small",
    "squeezenet1_0",
    "densenet121",
    "googlenet",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "resnet50",
    "wide_resnet50_2",
    "regnet_x_400mf",
    "swin_t",
]
# Every classification model of torchvision, except the giants (over 200M parameters).
GIANTS = {"regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_32gf"}
TORCHVISION_ALL = sorted(
    set(torchvision.models.list_models(module=torchvision.models))
    - GIANTS
    - set(TORCHVISION_CI)
    - set(TORCHVISION_SLOW)
)
SIZES = {"inception_v3": 96, "googlenet": 64}  # 224 for transformers, below


def _torchvision(name: str) -> tuple[nn.Module, int]:
    kwargs: dict = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    size = SIZES.get(name, 224 if name.startswith(("vit", "swin", "maxvit")) else 64)
    return torchvision.models.get_model(name, **kwargs), size


@pytest.mark.parametrize("name", TORCHVISION_CI)
def test_torchvision_representatives(name: str) -> None:
    _exact(*_torchvision(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_SLOW)
def test_torchvision_families(name: str) -> None:
    _exact(*_torchvision(name))


@pytest.mark.zoo
@pytest.mark.slow  # so that -m 'not slow' (the fast loop) leaves it out too
@pytest.mark.parametrize("name", TORCHVISION_ALL)
def test_every_torchvision_classifier(name: str) -> None:
    _exact(*_torchvision(name))


# -- timm -------------------------------------------------------------------------------------

TIMM_CI = {
    "convnext_atto": 64,  # channels-last layer norm, layer scale
    "skresnet18": 64,  # selective kernel: stack, sum over branches, softmax gates
    "resnest14d": 64,  # split attention: radix softmax over reshaped gates
    "mixnet_s": 64,  # mixed depthwise kernels: channel split and concat
    "hrnet_w18_small": 64,  # multi-resolution fusion: nearest upsampling, boxed
    "efficientvit_b0": 128,  # linear attention inside an autocast-disabled region
    "tf_efficientnet_b0": 64,  # "same" padding from the input size, BatchNormAct2d
}
TIMM_SLOW = {
    "cspresnet50": 64,
    "dpn68": 64,
    "res2net50_14w_8s": 64,
    "ghostnet_100": 64,
    "mobilevit_xxs": 128,
    "vit_tiny_patch16_224": 224,
}
TIMM_ALL = {
    "resnet18": 64,
    "efficientnet_b0": 64,
    "vgg11": 64,
    "regnetx_002": 64,
    "mobilenetv3_small_050": 64,
    "dla34": 64,
    "cspresnet50": 64,
    "ghostnet_100": 64,
    "rexnet_100": 64,
    "densenet121": 64,
    "dpn68": 64,
    "selecsls42b": 64,
    "res2net50_14w_8s": 64,
    "xception41": 64,
    "nfnet_f0": 64,
    "repvgg_a0": 64,
    "lcnet_050": 64,
    "tinynet_e": 64,
    "hardcorenas_a": 64,
    "darknet17": 64,
    "gernet_s": 64,
    "vovnet39a": 64,
    "convmixer_768_32": 64,
    "edgenext_xx_small": 128,
    "mobilevit_xxs": 128,
    "fastvit_t8": 128,
    "vit_tiny_patch16_224": 224,
    "levit_128s": 224,
}


@pytest.mark.parametrize("name", sorted(TIMM_CI))
def test_timm_representatives(name: str) -> None:
    _exact(timm.create_model(name, pretrained=False), TIMM_CI[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TIMM_SLOW))
def test_timm_families(name: str) -> None:
    _exact(timm.create_model(name, pretrained=False), TIMM_SLOW[name])


@pytest.mark.zoo
@pytest.mark.slow  # so that -m 'not slow' (the fast loop) leaves it out too
@pytest.mark.parametrize("name", sorted(set(TIMM_ALL) - set(TIMM_SLOW)))
def test_timm_zoo(name: str) -> None:
    _exact(timm.create_model(name, pretrained=False), TIMM_ALL[name])
