"""Region scores of map-output models (segmentation), exact: each heatmap equals a loop written
here that occludes the image, runs the model, resizes its map, and averages the class's
probability over the region — and the incremental plan is what the engine runs for it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import krypton_ql as kql
from compiler.errors import InvalidInputError, UnsupportedOperationError
from krypton_ql.integrations import segmentation
from tests.profiles import examples


class UNet(nn.Module):
    """An encoder–decoder with a skip connection (concatenation), nearest upsampling and a map
    at half the input size (resized by the region score). (``ConvTranspose2d`` decoders are in
    the property test below.)"""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.mid = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, 6, 3, padding=1))
        self.head = nn.Conv2d(12, classes, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        skip = self.down(x)
        x = self.up(self.mid(self.pool(skip)))
        return {"out": self.head(torch.cat([x, skip], 1)), "aux": x}


def _unet() -> nn.Module:
    torch.manual_seed(0)
    model = UNet()
    model.down[1].running_mean.uniform_(-0.5, 0.5)
    model.down[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def _loop(model, image, patch, stride, target, mask, score="prob", output="out") -> torch.Tensor:
    """The region score with the patch at every position, by full re-inference."""
    height, width = image.shape[1:]
    # Captum's windows at i·stride, i = 0 … ceil((H − patch) / stride), the last one clipped;
    # one that would start past the border (a stride above the patch) is dropped
    rows = len([i for i in range(-(-(height - patch) // stride) + 1) if i * stride < height])
    cols = len([j for j in range(-(-(width - patch) // stride) + 1) if j * stride < width])
    heatmap = torch.empty(rows, cols)
    with torch.no_grad():
        for i in range(rows):
            for j in range(cols):
                occluded = image.clone()
                occluded[:, i * stride : i * stride + patch, j * stride : j * stride + patch] = 0
                scores = model(occluded[None])[output]
                scores = F.interpolate(scores, size=(height, width), mode="bilinear",
                                       align_corners=False)  # fmt: skip
                if score == "prob":
                    scores = scores.softmax(1)
                heatmap[i, j] = scores[0, target][mask].mean()
    return heatmap


IMAGE = torch.rand(3, 16, 16)


def test_a_mask_region_equals_the_loop() -> None:
    model = _unet()
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[3:9, 5:13] = True
    got = kql.occlusion_heatmap(model, IMAGE, patch=4, stride=2, target=1, region=mask,
                                progress=False)  # fmt: skip
    assert torch.allclose(got, _loop(model, IMAGE, 4, 2, 1, mask), atol=1e-5)


def test_a_box_region_with_logits_equals_the_loop() -> None:
    model = _unet()
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[0:4, 8:16] = True
    got = kql.occlusion_heatmap(model, IMAGE, patch=3, stride=3, target=2, region=(0, 8, 4, 16),
                                score="logit", progress=False)  # fmt: skip
    assert torch.allclose(got, _loop(model, IMAGE, 3, 3, 2, mask, "logit"), atol=1e-5)


def test_the_default_region_is_the_clean_prediction_of_the_target() -> None:
    model = _unet()
    with torch.no_grad():
        clean = F.interpolate(model(IMAGE[None])["out"], size=(16, 16), mode="bilinear",
                              align_corners=False)[0].argmax(0)  # fmt: skip
    target = int(clean.flatten().mode().values)
    got = kql.occlusion_heatmap(model, IMAGE, patch=4, stride=4, target=target, progress=False)
    assert torch.allclose(got, _loop(model, IMAGE, 4, 4, target, clean == target), atol=1e-5)
    default = kql.occlusion_heatmap(model, IMAGE, patch=4, stride=4, progress=False)
    assert torch.equal(default, got)  # no target: the class with the most pixels


def test_the_region_score_is_maintained_incrementally() -> None:
    model = _unet()
    weights = segmentation.region_weights(model, IMAGE, (2, 2, 10, 10), None, (16, 16))
    wrapper = segmentation.RegionScores(model, weights, None, "prob", (16, 16)).eval()
    plan = kql.compile(wrapper, (3, 16, 16), patch=4, stride=2, score="logit")
    region = next(line for line in plan.explain().splitlines() if "RegionSum(" in line)
    assert "region aggregate" in region and "{delta}" in region  # the region sum by its delta
    assert dict(plan.optimized.rules_fired)["push_delta_through_region_sum"] == 1
    assert plan.theoretical_speedup > 1.5


class CaptumWrapper(nn.Module):
    """The wrapper Captum's users write for segmentation: one score per image."""

    def __init__(self, model: nn.Module, target: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.model, self.target = model, target
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"][:, self.target].mul(self.mask).sum((1, 2))


def test_the_captum_drop_in_accelerates_the_usual_segmentation_wrapper() -> None:
    import captum.attr

    from krypton_ql.integrations.captum import Occlusion

    mask = torch.zeros(8, 8)
    mask[1:5, 2:7] = 1.0
    wrapper = CaptumWrapper(_unet(), 2, mask).eval()
    images = torch.rand(2, 3, 16, 16)
    arguments = dict(sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=0.0)
    expected = captum.attr.Occlusion(wrapper).attribute(images, **arguments)
    occlusion = Occlusion(wrapper)
    got = occlusion.attribute(images, **arguments)
    assert occlusion.delegated is None  # the engine ran it, incrementally:
    assert (
        "RegionSum" in occlusion.last_plan.explain()
        and occlusion.last_plan.theoretical_speedup > 1.5
    )
    assert expected.abs().max() > 0.01 and torch.allclose(got, expected, atol=1e-5)


def test_the_oracle_takes_regions_too() -> None:
    model = _unet()
    kwargs = dict(patch=4, stride=4, target=0, region=(4, 4, 12, 12), progress=False)
    assert torch.allclose(kql.occlusion_heatmap(model, IMAGE, **kwargs),
                          kql.naive_heatmap(model, IMAGE, **kwargs), atol=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(region=(4, 4, 2, 2)), InvalidInputError, "region box"),
        (dict(region=torch.zeros(16, 16, dtype=torch.bool)), InvalidInputError, "region is empty"),
        (dict(region=torch.ones(8, 8, dtype=torch.bool)), InvalidInputError, "region mask has"),
        (dict(region="all"), InvalidInputError, "no such mask file"),
        (dict(region=torch.ones(16, 16)), InvalidInputError, "boolean .* threshold it"),
        (dict(region=[[True]]), InvalidInputError, "boolean mask"),
        (dict(output="logits"), InvalidInputError, "not among the model's outputs"),
        (dict(target=7, region=(0, 0, 4, 4)), InvalidInputError, "outside the model's 3"),
    ],
)
def test_region_errors_are_clear(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        kql.occlusion_heatmap(_unet(), IMAGE, patch=4, progress=False, **kwargs)


def test_a_region_needs_a_map_output() -> None:
    classifier = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(UnsupportedOperationError, match="needs a score map"):
        kql.occlusion_heatmap(classifier, IMAGE, patch=4, region=(0, 0, 4, 4), progress=False)


def _calibrated(model: nn.Module, size: int) -> nn.Module:
    """Random weights with batch-norm statistics from a few random batches (not 0/1)."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, size, size))
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50"]
)
def test_torchvision_segmentation_models_equal_naive(name) -> None:
    size = 64
    builder = getattr(torchvision.models.segmentation, name)
    options = {} if name.startswith("lraspp") else {"aux_loss": False}
    model = _calibrated(builder(weights=None, weights_backbone=None, num_classes=4, **options),
                        size)  # fmt: skip
    image = torch.rand(3, size, size)
    kwargs = dict(patch=16, stride=16, target=1, region=(8, 8, 40, 56), progress=False)
    got = kql.occlusion_heatmap(model, image, **kwargs)
    expected = kql.naive_heatmap(model, image, **kwargs)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


class _EncoderDecoder(nn.Module):
    """Random encoder (strided convolutions or pools) and decoder (nearest or bilinear
    upsampling or a transposed convolution, then convolutions), with an optional skip
    connection (add or concatenation)."""

    def __init__(self, depth: int, width: int, pool: bool, mode: str, skip: str, classes: int):
        super().__init__()
        self.encoder = nn.ModuleList()
        channels = 3
        for _ in range(depth):
            down = nn.MaxPool2d(2) if pool else nn.Identity()
            stride = 1 if pool else 2
            self.encoder.append(nn.Sequential(
                nn.Conv2d(channels, width, 3, stride=stride, padding=1), nn.ReLU(), down,
            ))  # fmt: skip
            channels = width
        self.decoder = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(width, width, 2, stride=2)
                if mode == "transposed"
                else nn.Upsample(scale_factor=2, mode=mode),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(),
            )  # fmt: skip
            for _ in range(depth)
        )
        self.skip = skip
        self.head = nn.Conv2d(2 * width if skip == "cat" else width, classes, 1)
        self.stem = nn.Conv2d(3, width, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        first = self.stem(x)
        for layer in self.encoder:
            x = layer(x)
        for layer in self.decoder:
            x = layer(x)
        if self.skip == "add":
            x = x + first
        elif self.skip == "cat":
            x = torch.cat([x, first], 1)
        return {"out": self.head(x)}


@settings(max_examples=examples(12), deadline=None)
@given(
    depth=st.integers(1, 2),
    width=st.sampled_from([2, 5]),
    pool=st.booleans(),
    mode=st.sampled_from(["nearest", "bilinear", "transposed"]),
    skip=st.sampled_from(["none", "add", "cat"]),
    patch=st.integers(2, 5),
    stride=st.integers(2, 4),
    box=st.tuples(st.integers(0, 7), st.integers(0, 7), st.integers(9, 16), st.integers(9, 16)),
    score=st.sampled_from(["prob", "logit"]),
    seed=st.integers(0, 999),
)
def test_random_encoder_decoders_equal_the_loop(
    depth, width, pool, mode, skip, patch, stride, box, score, seed
) -> None:
    torch.manual_seed(seed)
    model = _EncoderDecoder(depth, width, pool, mode, skip, classes=3).eval()
    image = torch.rand(3, 16, 16)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[box[0] : box[2], box[1] : box[3]] = True
    got = kql.occlusion_heatmap(model, image, patch=patch, stride=stride, target=1, region=box,
                                score=score, progress=False)  # fmt: skip
    expected = _loop(model, image, patch, stride, 1, mask, score)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_the_query_language_explains_regions_of_a_map_output_model() -> None:
    session = kql.connect()
    session.register_model("seg", _unet(), classes=["sky", "road", "car"])
    session.register_images("street", IMAGE[None])
    box = (2, 2, 10, 12)
    result = session.sql(
        "SELECT class, label, heatmap(prob) AS h FROM occlusion(street, seg, patch => 4, "
        f"stride => 2, region => {box}) WHERE label IN ('road', 'car') GROUP BY class, label "
        "ORDER BY class",
        progress=False,
    )
    assert [row[:2] for row in result.rows] == [(1, "road"), (2, "car")]
    for row, target in zip(result.rows, (1, 2)):
        expected = kql.occlusion_heatmap(_unet(), IMAGE, patch=4, stride=2, target=target,
                                         region=box, progress=False)  # fmt: skip
        assert torch.allclose(row[2], expected, atol=1e-6)
    weights = segmentation.region_weights(_unet(), IMAGE, None, None, (16, 16))
    present = segmentation.default_target(weights)  # the class with the most pixels
    default = session.sql(
        "SELECT heatmap(prob) AS h FROM occlusion(street, seg, patch => 4, stride => 4) "
        f"WHERE class = {present}", progress=False,
    )  # fmt: skip
    expected = kql.occlusion_heatmap(_unet(), IMAGE, patch=4, stride=4, target=present,
                                     progress=False)  # fmt: skip
    assert torch.allclose(default.rows[0][0], expected, atol=1e-6)
    absent = [k for k in range(3) if not bool(weights[k].any())]
    assert absent  # this image predicts no pixel of some class: it has no default region
    with pytest.raises(kql.QueryError, match="no pixels predicted as class"):
        session.sql("SELECT * FROM occlusion(street, seg, patch => 4, stride => 4) "
                    f"WHERE class = {absent[0]}", progress=False)  # fmt: skip
    with pytest.raises(kql.QueryError, match="region box"):
        session.sql("SELECT * FROM occlusion(street, seg, patch => 4, region => (9, 9, 2, 2))",
                    progress=False)  # fmt: skip


def test_registered_regions_are_named_in_queries(tmp_path) -> None:
    from PIL import Image

    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[2:9, 4:15] = True
    Image.fromarray(mask.numpy().astype("uint8") * 255).save(tmp_path / "mask.png")
    session = kql.connect()
    session.register_model("seg", _unet())
    session.register_images("street", IMAGE[None])
    session.register_region("drawn", tmp_path / "mask.png")  # a mask image file
    session.register_region("box", (0, 0, 8, 8))
    assert session.regions() == ["drawn", "box"]
    query = ("SELECT heatmap(prob) AS h FROM occlusion(street, seg, patch => 4, stride => 2, "
             "region => '{}') WHERE class = 1")  # fmt: skip
    for name, region in (("drawn", mask), ("box", (0, 0, 8, 8))):
        got = session.sql(query.format(name), progress=False).rows[0][0]
        expected = _loop(_unet(), IMAGE, 4, 2, 1, segmentation.region_mask(region, (16, 16)))
        assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(kql.QueryError, match=r"unknown region 'lake' \(regions: drawn, box\)"):
        session.sql(query.format("lake"), progress=False)
    session.register_region("small", torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(kql.QueryError, match="region mask has shape \\[4, 4\\], the image is 16"):
        session.sql(query.format("small"), progress=False)


def test_several_classes_of_one_image_in_one_pass() -> None:
    model = _unet()
    with torch.no_grad():  # centre the classes' logits: each predicts part of the image
        model.head.bias -= model(IMAGE[None])["out"].mean((0, 2, 3))
    weights = segmentation.region_weights(model, IMAGE, None, None, (16, 16))
    assert all(bool(weights[k].any()) for k in range(3))
    for region in ((2, 2, 12, 12), None):
        classes = [2, 0, 1]
        kwargs = dict(patch=4, stride=3, target=classes, region=region, progress=False)
        got = kql.occlusion_heatmap(model, IMAGE, **kwargs)
        assert got.shape == (len(classes), 5, 5)
        for index, klass in enumerate(classes):
            mask = segmentation.region_mask(region, (16, 16)) if region else weights[klass] > 0
            assert torch.allclose(got[index], _loop(model, IMAGE, 4, 3, klass, mask), atol=1e-5)
        assert torch.allclose(kql.naive_heatmap(model, IMAGE, **kwargs), got, atol=1e-5)
