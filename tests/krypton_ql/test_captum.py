"""``krypton_ql.captum.Occlusion`` returns what ``captum.attr.Occlusion`` returns."""

from __future__ import annotations

import logging

import captum.attr as captum
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from krypton_ql import models
from krypton_ql.captum import Occlusion
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
    arguments = dict(sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2), target=1)
    ours = Occlusion(model)
    with caplog.at_level(logging.WARNING, logger="krypton_ql.captum"):
        got = ours.attribute(images, **arguments)
    assert "the window does not span every channel" in caplog.text
    assert ours.delegated == "the window does not span every channel"
    expected = captum.Occlusion(model).attribute(images, **arguments)
    assert torch.equal(got, expected)
    # a forward function that is not a module
    function = Occlusion(lambda x: model(x) * 2)
    function.attribute(images, sliding_window_shapes=(3, 3, 3), target=0)
    assert function.delegated == "the forward function is not an nn.Module"


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
