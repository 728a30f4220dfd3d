"""What a window holds beyond a colour (``kql.Fill``): per-pixel baselines, ``x·mul + add``
over the window and the window scaled by its mean give the oracle's heatmaps, incrementally
and by naive re-inference, on images, signals and volumes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import krypton_ql as kql
from tests import oracle
from tests.helpers import assert_matches_oracle, small_cnn
from tests.profiles import examples
from tests.strategies import cnn_cases
from tests.strategies_nd import nd_cases

KINDS = ("baseline", "baselines", "window", "window_add", "mean", "channels")


def _fill(kind: str, image: torch.Tensor, patch: tuple[int, ...], count: int):
    """A ``kql.Fill`` of ``kind`` and the same content in the oracle's plain terms."""
    channels, spatial = image.shape[-len(patch) - 1], image.shape[-len(patch) :]
    if kind == "baseline":  # one blurred-looking baseline for every input
        values = torch.randn(channels, *spatial) * 0.5
        return kql.Fill.per_pixel(values), oracle.Content(baseline=values)
    if kind == "baselines":  # one per input, a single channel broadcast
        values = torch.randn(count, 1, *spatial)
        return kql.Fill.per_pixel(values), oracle.Content(baseline=values)
    if kind == "window":  # MONAI's gaussian shape: x·(1 − g)
        mul = torch.rand(1, *patch)
        return kql.Fill.window(mul=mul), oracle.Content(mul=mul)
    if kind == "window_add":
        mul, add = torch.rand(channels, *patch), torch.randn(1, *patch)
        return kql.Fill.window(mul, add), oracle.Content(mul=mul, add=add)
    if kind == "mean":
        return kql.Fill.scaled_by_mean(), oracle.Content(by_mean=True)
    # one channel occluded with a per-pixel baseline, the others kept: x·mul + baseline·mask
    keep = torch.ones(channels, *([1] * len(patch)))
    keep[0] = 0
    values = torch.randn(channels, *spatial) * (1 - keep)
    fill = kql.Fill(mul=keep, baseline=values)
    return fill, oracle.Content(mul=keep, baseline=values)


def _check(model, image, patch, stride, kind) -> None:
    count = len(image) if image.dim() == len(patch) + 2 else 1
    fill, content = _fill(kind, image, patch, count)
    expected = oracle.run(model, image, patch, stride, content=content)
    for compute in (kql.occlusion_heatmap, kql.naive_heatmap):
        got = compute(model, image, patch=patch, stride=stride, fill=fill, progress=False)
        assert_matches_oracle(got, model, image, patch=patch, stride=stride, expected=expected)


@settings(max_examples=examples(25))
@given(case=cnn_cases(dag=True, wide=False), kind=st.sampled_from(KINDS))
def test_images(case, kind: str) -> None:
    _check(case.model, case.image, case.patch, case.stride, kind)


@settings(max_examples=examples(25))
@given(case=st.sampled_from([1, 3]).flatmap(nd_cases), kind=st.sampled_from(KINDS))
def test_signals_and_volumes(case, kind: str) -> None:
    _check(case.model, case.image, case.patch, case.stride, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_gives_each_input_its_own_baseline(kind: str) -> None:
    torch.manual_seed(0)
    images = torch.randn(3, 3, 12, 11)
    _check(small_cnn(), images, (4, 3), (3, 3), kind)


def test_approximate_plans_take_the_fill_too() -> None:
    """τ and drill-down plans fill their windows alike: at τ = 1 the heatmap is exact, and a
    drill-down's refined cells are."""
    torch.manual_seed(0)
    model, images, patch = small_cnn(), torch.randn(2, 3, 12, 12), (4, 4)
    fill, content = _fill("baselines", images, patch, 2)
    expected = oracle.run(model, images, patch, 2, content=content)
    got = kql.occlusion_heatmap(model, images, patch=patch, stride=2, fill=fill, tau=1.0,
                                progress=False)  # fmt: skip
    assert_matches_oracle(got, model, images, patch=patch, stride=2, expected=expected)
    plan = kql.compile(model, images.shape[1:], patch=patch, stride=2, drilldown=0.5,
                       speedup=1.2)  # fmt: skip
    got = plan.run(images, fill=fill, progress=False)
    refined = torch.as_tensor(plan.last_selected).reshape(2, -1)
    cells = refined.all(0).nonzero().flatten()
    assert len(cells) > 0
    assert_matches_oracle(got, model, images, patch=patch, stride=2, expected=expected,
                          cells=cells)  # fmt: skip


def test_bad_fills_get_clear_errors() -> None:
    image = torch.randn(3, 12, 12)
    model = small_cnn()
    with pytest.raises(kql.InvalidInputError, match="fill must be a kql.Fill"):
        kql.occlusion_heatmap(model, image, patch=4, fill=0.5, progress=False)
    with pytest.raises(kql.InvalidInputError, match=r"baseline of shape \[2, 12, 12\]"):
        wrong = kql.Fill.per_pixel(torch.zeros(2, 12, 12))
        kql.occlusion_heatmap(model, image, patch=4, fill=wrong, progress=False)
    with pytest.raises(kql.InvalidInputError, match=r"the window's mul .* \[3, 4, 4\]"):
        kql.naive_heatmap(model, image, patch=4, fill=kql.Fill.window(torch.ones(5, 5)),
                          progress=False)  # fmt: skip
    with pytest.raises(kql.InvalidInputError, match="a number or a tensor"):
        kql.Fill.window(mul="half")
