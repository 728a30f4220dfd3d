"""The built-in pretrained EfficientNet-Lite0 on scikit-image photos."""

from __future__ import annotations

import pytest
import torch

import krypton_ql as kql
from krypton_ql import models
from tests import oracle
from tests.helpers import assert_matches_oracle

pytestmark = pytest.mark.slow  # the pretrained model on real photos


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return models.efficientnet_lite0()


@pytest.mark.parametrize(
    ("photo", "classes"),
    [("chelsea", {281, 282, 285}), ("coffee", {967}), ("rocket", {657, 744})],
)
def test_pretrained_predictions(model, photo: str, classes: set[int]) -> None:
    image = models.preprocess(models.sample_photo(photo))
    with torch.no_grad():
        predicted = int(model(image[None]).argmax())
    assert predicted in classes, models.imagenet_classes()[predicted]


def test_class_names_are_imagenet() -> None:
    names = models.imagenet_classes()
    assert len(names) == 1000 and names[967] == "espresso" and names[281] == "tabby"


def test_exact_equals_the_oracle_on_a_real_photo(model) -> None:
    image = models.preprocess(models.sample_photo("chelsea"))
    options = dict(patch=32, stride=24, color=0.0)
    exact = kql.occlusion_heatmap(model, image, progress=False, **options)
    assert exact.shape == (9, 9)
    expected = oracle.run(model, image, **options)
    moved = assert_matches_oracle(exact, model, image, expected=expected, **options)
    assert moved < 1e-3  # error / movement
    # The photo's cat matters: some patch drops the probability noticeably.
    truth = expected.heatmap()
    assert float(truth.max() - truth.min()) > 0.05


def test_same_padding_is_computed_from_the_input_size() -> None:
    """At 160 px the TF "SAME" pads differ from 224 px; the plan stays exact."""
    model = models.efficientnet_lite0(image_size=160)
    image = torch.randn(3, 160, 160)
    options = dict(patch=40, stride=40, score="logit")
    exact = kql.occlusion_heatmap(model, image, progress=False, **options)
    assert_matches_oracle(exact, model, image, **options)
