"""``krypton_ql.captum.Occlusion`` returns what ``captum.attr.Occlusion`` returns."""

from __future__ import annotations

import logging

import captum.attr as captum
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compiler.errors import KryptonError
from krypton_ql import models
from krypton_ql.integrations.captum import Occlusion
from tests.profiles import examples
from tests.strategies import Case, cnn_cases


def _assert_close(got, expected, model, inputs) -> None:
    """Within 1e-5 of Captum's output scale, but never below fp32 rounding of the outputs being
    differenced (a 1×1 window moves a logit of ~1 by ~1e-3; one ulp of it is 2e-5 of that)."""
    with torch.no_grad():
        outputs = float(model(inputs).abs().max())
    tolerance = 1e-5 * float(expected.abs().max()) + 1e-6 * outputs
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= tolerance


@settings(max_examples=examples(25))
@given(case=cnn_cases(dag=True), data=st.data())
def test_equals_captum_on_random_cnns(case: Case, data) -> None:
    images = torch.stack([case.image, case.image.flip(-1)])
    channels = images.shape[1]
    window = (channels, case.patch[0], case.patch[1])
    strides = (channels, case.stride[0], case.stride[1])
    if any(s > w for s, w in zip(strides[1:], window[1:])):
        strides = (channels, *window[1:])  # Captum requires stride ≤ window
    target = data.draw(st.sampled_from([0, [1, 0]]))
    colour = case.color
    baselines = colour if isinstance(colour, float) else torch.tensor(colour)[:, None, None]
    arguments = dict(
        sliding_window_shapes=window, strides=strides, target=target, baselines=baselines
    )
    ours = Occlusion(case.model)
    got = ours.attribute(images, **arguments)
    expected = captum.Occlusion(case.model).attribute(images, **arguments)
    assert ours.delegated is None and ours.last_plan is not None
    assert got.shape == expected.shape
    _assert_close(got, expected, case.model, images)


@pytest.mark.slow
def test_equals_captum_on_the_pretrained_model_and_a_photo() -> None:
    model = models.efficientnet_lite0()
    image = models.preprocess(models.sample_photo("chelsea"))[None]
    arguments = dict(
        sliding_window_shapes=(3, 32, 32), strides=(3, 24, 24), target=282, baselines=0.0,
        perturbations_per_eval=16,
    )  # fmt: skip
    got = Occlusion(model).attribute(image, **arguments)
    expected = captum.Occlusion(model).attribute(image, **arguments)
    _assert_close(got, expected, model, image)


def test_per_channel_baseline_and_default_stride() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()  # fmt: skip
    images = torch.randn(1, 3, 9, 8)
    baselines = torch.tensor([0.5, -1.0, 2.0])[:, None, None]
    arguments = dict(sliding_window_shapes=(3, 3, 2), baselines=baselines, target=2)
    got = Occlusion(model).attribute(images, **arguments)
    expected = captum.Occlusion(model).attribute(images, **arguments)
    _assert_close(got, expected, model, images)


def test_what_it_cannot_accelerate_goes_to_captum_with_a_warning(caplog) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()  # fmt: skip
    images = torch.randn(1, 3, 8, 8)
    function = Occlusion(lambda x: model(x) * 2)  # a forward function that is not a module
    with caplog.at_level(logging.WARNING, logger="krypton_ql.captum"):
        got = function.attribute(images, sliding_window_shapes=(3, 3, 3), target=0)
    assert function.delegated == "the forward function is not an nn.Module"
    assert "the forward function is not an nn.Module" in caplog.text
    expected = captum.Occlusion(lambda x: model(x) * 2).attribute(
        images, sliding_window_shapes=(3, 3, 3), target=0
    )
    assert torch.equal(got, expected)


def test_an_unexportable_model_is_delegated(caplog) -> None:
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            x = self.conv(x)
            if x.sum() > 0:  # data-dependent control flow
                x = -x
            return x.mean((2, 3))

    model = Untraceable().eval()
    ours = Occlusion(model)
    with caplog.at_level(logging.WARNING, logger="krypton_ql.captum"):
        ours.attribute(torch.randn(1, 3, 8, 8), sliding_window_shapes=(3, 2, 2), target=0)
    assert ours.delegated is not None and "cannot capture" in ours.delegated


def test_a_model_with_upsampling_is_accelerated_and_equals_captum() -> None:
    """Interpolation used to send the drop-in to Captum; now it runs in the plan (nearest
    upsampling with its own box rule) and agrees with Captum."""
    from captum.attr import Occlusion as CaptumOcclusion

    class Upsampled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            x = self.conv(x)
            return torch.nn.functional.interpolate(x, scale_factor=2).mean((2, 3))

    model = Upsampled().eval()
    image = torch.randn(1, 3, 8, 8)
    ours = Occlusion(model)
    got = ours.attribute(image, sliding_window_shapes=(3, 2, 2), strides=(3, 2, 2), target=1)
    assert ours.delegated is None
    want = CaptumOcclusion(model).attribute(
        image, sliding_window_shapes=(3, 2, 2), strides=(3, 2, 2), target=1
    )
    assert torch.allclose(got, want, atol=1e-5)


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()  # fmt: skip


X = torch.rand(2, 3, 8, 8)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (dict(sliding_window_shapes=(3, 2, 2), strides=(3, 4, 4), target=0), AssertionError),
        (dict(sliding_window_shapes=(3, 8, 2), strides=(3, 9, 3), target=0), AssertionError),
        (dict(sliding_window_shapes=[3, 2, 2], target=0), AssertionError),
        (dict(sliding_window_shapes=(2, 2), target=0), AssertionError),
        (dict(sliding_window_shapes=(3, 9, 9), target=0), AssertionError),
        (dict(sliding_window_shapes=(3, 2, 2), target=torch.tensor([[0], [1]])), AssertionError),
        (dict(sliding_window_shapes=(3, 2, 2), target=[0, 1, 2]), AssertionError),
        (dict(sliding_window_shapes=(3, 2, 2), target=5), IndexError),
    ],
)
def test_what_captum_rejects_is_rejected_with_an_error_of_captums_kind(arguments, error) -> None:
    with pytest.raises(error):
        captum.Occlusion(_small()).attribute(X, **arguments)
    with pytest.raises(error) as ours:
        Occlusion(_small()).attribute(X, **arguments)
    assert isinstance(ours.value, KryptonError)


def test_attribute_future_is_not_implemented_as_in_captum() -> None:
    for occlusion in (captum.Occlusion(_small()), Occlusion(_small())):
        with pytest.raises(NotImplementedError):
            occlusion.attribute_future()


@pytest.mark.parametrize(
    "arguments",
    [
        dict(inputs=(X,), sliding_window_shapes=((3, 2, 2),), strides=((3, 2, 2),)),
        dict(inputs=X, sliding_window_shapes=(3, 2, 2), baselines=torch.rand(2, 3, 1, 1)),
        dict(
            inputs=X,
            sliding_window_shapes=(3, 2, 2),
            baselines=torch.tensor([0.5, 0.5])[:, None, None, None].expand(2, 3, 1, 1),
        ),  # noqa: E501
        dict(inputs=X.double(), sliding_window_shapes=(3, 3, 3), strides=2),
        # a stride beyond the window along an axis the window spans whole (Captum allows it)
        dict(inputs=X, sliding_window_shapes=(3, 8, 2), strides=(3, 10, 1)),
        dict(inputs=X, sliding_window_shapes=(3, 4, 4), strides=4),  # 4 > 3 channels
        dict(inputs=X, sliding_window_shapes=(3, 8, 8), strides=20),
        dict(inputs=X, sliding_window_shapes=(3, 3, 8), strides=(1, 2, 64)),
    ],
)
def test_calls_captum_takes_are_accelerated_and_equal_captum(arguments) -> None:
    inputs = arguments["inputs"]
    model = _small().to(inputs.dtype if isinstance(inputs, torch.Tensor) else torch.float32)
    ours = Occlusion(model)
    got = ours.attribute(target=1, **arguments)
    expected = captum.Occlusion(model).attribute(target=1, **arguments)
    assert ours.delegated is None
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == 1
        got, expected = got[0], expected[0]
    assert got.dtype == expected.dtype
    _assert_close(got, expected, model, inputs[0] if isinstance(inputs, tuple) else inputs)


def test_a_baseline_is_broadcast_as_captum_broadcasts_it() -> None:
    """A 1-D baseline of length C is broadcast along the width (W = C here): it varies inside
    each channel — a per-pixel baseline, accelerated, with Captum's numbers."""
    model, images = _small(), torch.rand(1, 3, 3, 3)
    ours = Occlusion(model)
    arguments = dict(sliding_window_shapes=(3, 2, 2), baselines=torch.tensor([0.0, 10.0, 20.0]),
                     target=0)  # fmt: skip
    got = ours.attribute(images, **arguments)
    assert ours.delegated is None
    _assert_close(got, captum.Occlusion(model).attribute(images, **arguments), model, images)


def test_a_model_in_training_mode_is_delegated() -> None:
    model = _small().train()
    ours = Occlusion(model)
    got = ours.attribute(X, sliding_window_shapes=(3, 2, 2), target=0)
    assert ours.delegated == "the model is in training mode"
    expected = captum.Occlusion(model).attribute(X, sliding_window_shapes=(3, 2, 2), target=0)
    assert torch.equal(got, expected)


def _model(d: int, channels: int = 3) -> nn.Module:
    torch.manual_seed(d)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[d]
    pool = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}[d]
    return nn.Sequential(conv(channels, 4, 3, padding=1), nn.ReLU(), pool(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()  # fmt: skip


@pytest.mark.parametrize(
    ("d", "shape", "window", "strides", "baselines"),
    [
        (1, (2, 3, 40), (3, 6), (3, 4), None),
        (1, (2, 3, 40), (1, 6), (1, 5), torch.randn(2, 3, 40)),  # per example, per pixel
        (3, (1, 2, 6, 7, 8), (2, 3, 3, 4), (2, 2, 3, 2), 0.5),
        (3, (2, 2, 6, 6, 6), (1, 2, 3, 3), (1, 2, 2, 2), torch.randn(2, 1, 1, 6)),
        (2, (2, 3, 9, 8), (2, 3, 3), (1, 2, 2), torch.randn(3, 9, 8)),  # channel windows
        (2, (1, 3, 9, 8), (3, 4, 3), (3, 2, 2), torch.randn(1, 1, 9, 8)),  # a blurred copy
    ],
    ids=["signal", "signal-channels-baseline", "volume", "volume-channels",
         "image-channels-baseline", "image-per-pixel"],
)  # fmt: skip
def test_every_rank_window_and_baseline_captum_takes(d, shape, window, strides, baselines):
    """Signals, volumes, windows over part of the channels and per-pixel baselines are
    accelerated and give Captum's numbers."""
    images = torch.randn(*shape)
    model = _model(d, shape[1])
    arguments = dict(sliding_window_shapes=window, strides=strides, baselines=baselines,
                     target=[1] * shape[0])  # fmt: skip
    ours = Occlusion(model)
    got = ours.attribute(images, **arguments)
    assert ours.delegated is None
    _assert_close(got, captum.Occlusion(model).attribute(images, **arguments), model, images)


def test_an_ssim_target_is_an_explicit_option_and_stays_close_to_captum() -> None:
    """Off by default (the attributions equal Captum's); with ``ssim=`` and a profile the
    planner's plan runs (explain says which), and the attributions keep the structure of
    Captum's exact ones."""
    from krypton_ql import quality
    from tests.helpers import small_cnn
    from tests.krypton_ql.test_refine import _profile

    torch.manual_seed(7)
    model, images = small_cnn(), torch.rand(2, 3, 20, 20)
    call = dict(sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), target=1)
    expected = captum.Occlusion(model).attribute(images, **call)
    exact = Occlusion(model)
    assert torch.allclose(exact.attribute(images, **call), expected, atol=1e-5)
    assert "quality target" not in exact.last_plan.explain()
    approximate = Occlusion(model, ssim=0.9, profile=_profile())
    got = approximate.attribute(images, **call)
    assert "→ ≈ coarse-to-fine" in approximate.last_plan.explain()
    for n in range(2):
        assert quality.ssim(expected[n, 0], got[n, 0]) >= 0.85
    with pytest.raises(KryptonError, match="profile= is read by ssim="):
        Occlusion(model, profile=_profile())
