"""Regions of any shape (``kql.ablation_scores``, ``compiler.regions``): thin, L-shaped,
disconnected, border-touching, one-cell and whole-input regions against the independent
oracle (one full forward per region, no bucketing), in one, two and three spatial axes;
regions that are the patch grid equal the square-patch heatmap; bucketing bounds the plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import krypton_ql as kql
from compiler.regions import bucketize, ladder, regions_of
from tests import oracle
from tests.helpers import small_cnn
from tests.profiles import examples
from tests.strategies import Case, cnn_cases


def _assert_oracle(result, model, images, labels, baseline=0.0, score="prob") -> None:
    ids, expected = oracle.ablate(model, images, labels, baseline, score=score)
    assert result.ids.tolist() == ids
    got = result.scores[:, 0].double()
    assert torch.equal(torch.isnan(got), torch.isnan(expected)), "regions present differ"
    scale = 1.0 if score == "prob" else max(1.0, float(expected.nan_to_num().abs().max()))
    torch.testing.assert_close(got.nan_to_num(), expected.nan_to_num(), atol=2e-5 * scale, rtol=0)


def _shapes(height: int, width: int) -> torch.Tensor:
    """One label image holding every awkward shape: a one-cell region, a thin row, an L, two
    separate blobs of one label, regions on every border, and the rest (label 0)."""
    labels = torch.zeros(height, width, dtype=torch.long)
    labels[height // 2, width // 2] = 1  # one cell
    labels[1, 2 : width - 2] = 2  # a thin row
    labels[3:8, 1] = 3
    labels[7, 1:5] = 3  # an L
    labels[0:2, 0:2] = 4
    labels[height - 2 :, width - 2 :] = 4  # two blobs in opposite corners
    labels[:, width - 1] = 5  # the right border
    labels[height - 1, : width // 2] = 6  # the bottom border
    return labels


def test_awkward_shapes_equal_the_oracle() -> None:
    torch.manual_seed(0)
    model, images = small_cnn(), torch.rand(2, 3, 16, 14)
    labels = _shapes(16, 14)
    for score in ("prob", "logit"):
        result = kql.ablation_scores(model, images, labels, score=score, progress=False)
        _assert_oracle(result, model, images, labels, score=score)
    whole = torch.zeros(16, 14, dtype=torch.long)  # the whole image: one region
    _assert_oracle(kql.ablation_scores(model, images, whole, progress=False), model, images, whole)


@st.composite
def painted(draw: st.DrawFn, shape: tuple[int, ...]) -> torch.Tensor:
    """A label image painted with random boxes, lines and cells (later strokes on top)."""
    labels = np.zeros(shape, dtype=np.int64)
    for label in range(1, draw(st.integers(1, 6)) + 1):
        first = [draw(st.integers(0, n - 1)) for n in shape]
        last = [draw(st.integers(f, min(n - 1, f + draw(st.integers(0, 6))))) for f, n in
                zip(first, shape)]  # fmt: skip
        labels[tuple(slice(f, e + 1) for f, e in zip(first, last))] = label
    return torch.from_numpy(labels)


@settings(max_examples=examples(40), deadline=None)
@given(case=cnn_cases(), data=st.data())
def test_random_regions_of_random_cnns_equal_the_oracle(case: Case, data: st.DataObject) -> None:
    labels = data.draw(painted(tuple(case.image.shape[1:])))
    baseline = data.draw(st.sampled_from([0.0, 0.5, "pixel"]))
    fill = None
    if baseline == "pixel":
        baseline = torch.rand(case.image.shape)
        fill = kql.Fill.per_pixel(baseline)
    result = kql.ablation_scores(
        case.model, case.image, labels, color=0.0 if fill is not None else baseline, fill=fill,
        progress=False, max_plans=data.draw(st.sampled_from([1, 2, None])),
    )  # fmt: skip
    _assert_oracle(result, case.model, case.image[None], labels, baseline)


def test_per_image_labels_and_per_pixel_baselines() -> None:
    torch.manual_seed(1)
    model, images = small_cnn(), torch.rand(3, 3, 12, 12)
    labels = torch.stack([_shapes(12, 12), _shapes(12, 12).T, torch.randint(0, 9, (12, 12))])
    baseline = torch.rand(3, 3, 12, 12)
    result = kql.ablation_scores(model, images, labels, fill=kql.Fill.per_pixel(baseline),
                                 target=[0, 1, 2], progress=False)  # fmt: skip
    ids, expected = oracle.ablate(model, images, labels[:, None], baseline, target=[0, 1, 2])
    assert result.targets.flatten().tolist() == [0, 1, 2]
    got = result.scores[:, 0].double()
    torch.testing.assert_close(got.nan_to_num(), expected.nan_to_num(), atol=2e-5, rtol=0)


def test_signals_and_volumes() -> None:
    torch.manual_seed(2)
    signal_model = nn.Sequential(
        nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip
    signals = torch.randn(2, 2, 40)
    runs = torch.arange(40) // 7  # runs of 7 samples
    runs[[3, 30]] = 9  # one label in two places
    result = kql.ablation_scores(signal_model, signals, runs, progress=False)
    _assert_oracle(result, signal_model, signals, runs)
    volume_model = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2), nn.AdaptiveAvgPool3d(1),
        nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip
    volume = torch.rand(1, 1, 8, 10, 12)
    blobs = torch.zeros(8, 10, 12, dtype=torch.long)
    blobs[2:5, 3:6, 4:9] = 1
    blobs[0, :, 0] = 2
    blobs[7, 9, 11] = 3
    result = kql.ablation_scores(volume_model, volume, blobs, spatial_dims=3, progress=False)
    assert result.maps().shape == (1, 1, 1, 8, 10, 12)
    _assert_oracle(result, volume_model, volume, blobs)


def test_the_patch_grid_as_regions_is_the_square_patch_heatmap() -> None:
    torch.manual_seed(3)
    model, image = small_cnn(), torch.rand(3, 16, 20)
    rows, cols = torch.arange(16) // 4, torch.arange(20) // 4
    grid = rows[:, None] * 5 + cols[None, :]
    result = kql.ablation_scores(model, image, grid, color=0.3, progress=False)
    heatmap = kql.occlusion_heatmap(model, image, patch=4, stride=4, color=0.3, progress=False)
    torch.testing.assert_close(result.scores[0, 0].reshape(4, 5), heatmap, atol=1e-6, rtol=0)
    assert result.describe().startswith("4×4: 20 regions")  # one plan, no cell wasted
    painted = result.maps()[0, 0, 0]
    assert painted[5, 9] == result.drops[0, 0, 7]  # pixel (5, 9) is in cell (1, 2): label 7


def test_bucketing_bounds_plans_and_reports_the_waste() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((64, 64), dtype=np.int64)
    for label in range(1, 40):
        y, x = rng.integers(0, 60, 2)
        h, w = rng.integers(1, 20, 2)
        labels[y : y + h, x : x + w] = label
    regions = regions_of(labels, 2)
    free = bucketize(regions, (64, 64), max_plans=None)
    assert all(side in ladder(64) for b in free.buckets for side in b.box)
    for limit in (1, 2, 4):
        bounded = bucketize(regions, (64, 64), max_plans=limit)
        assert len(bounded.buckets) <= limit
        assert bounded.waste >= free.waste  # fewer plans, more cells
        for bucket in bounded.buckets:  # every box holds its regions' bounding boxes
            for axis, (first, size) in enumerate(zip(regions.starts, regions.sizes)):
                start = bucket.starts[axis]
                assert (start <= first[bucket.members]).all()
                end = first[bucket.members] + size[bucket.members]
                assert (start + bucket.box[axis] >= end).all()
                assert (start >= 0).all() and (start + bucket.box[axis] <= 64).all()
    assert "regions in 1 plans" in bucketize(regions, (64, 64), max_plans=1).describe()


def test_bad_segments_are_clear_errors() -> None:
    model, image = small_cnn(), torch.rand(3, 8, 8)
    with pytest.raises(kql.KryptonError, match="must be integers"):
        kql.ablation_scores(model, image, torch.rand(8, 8), progress=False)
    with pytest.raises(kql.KryptonError, match="do not broadcast"):
        kql.ablation_scores(model, image, torch.zeros(7, 8, dtype=torch.long), progress=False)
    with pytest.raises(kql.KryptonError, match="max_plans must be at least 1"):
        kql.ablation_scores(model, image, torch.zeros(8, 8, dtype=torch.long), max_plans=0,
                            progress=False)  # fmt: skip


def test_segments_from_scikit_image_and_instances() -> None:
    from krypton_ql import models, segments

    photo = models.sample_photo("coffee")[::4, ::4]
    methods = (("slic", {"n_segments": 30}), ("felzenszwalb", {"scale": 200}),
               ("quickshift", {"max_dist": 20}), ("watershed", {"markers": 20}))  # fmt: skip
    for method, options in methods:
        labels = segments.segment(photo, method, **options)
        assert labels.shape == photo.shape[:2] and labels.dtype == torch.int64
        assert labels.min() == 0 and int(labels.max()) + 1 == len(labels.unique()) > 3, method
    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    masks[0, :3, :3] = True
    masks[1, 2:5, 2:5] = True
    instances = segments.from_instances(masks)
    assert instances[0, 0] == 1 and instances[2, 2] == 1 and instances[4, 4] == 2
    assert instances[5, 5] == 0
    with pytest.raises(kql.KryptonError, match="unknown segmentation"):
        segments.segment(photo, "kmeans")
    with pytest.raises(kql.KryptonError, match="holds integers"):
        segments.from_labels(np.zeros((2, 2)))
