"""Occlusion of signals ``[C, L]`` and volumes ``[C, D, H, W]``: incremental heatmaps of random
1-D and 3-D CNNs equal the independent oracle's, batches give one heatmap per input, and the
API says how it reads a shape it could read two ways."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import krypton_ql as kql
from tests import oracle
from tests.helpers import assert_matches_oracle
from tests.profiles import examples
from tests.strategies_nd import Case, nd_cases

STRATEGIES = st.sampled_from(["auto", "recompute", "delta"])


def _check(case: Case, strategy: str) -> None:
    plan = kql.compile(
        case.model,
        case.image.shape,
        patch=case.patch,
        stride=case.stride,
        color=case.color,
        linear_strategy=strategy,
    )
    got = plan.run(case.image, progress=False)
    assert got.shape == plan.grid
    assert_matches_oracle(
        got, case.model, case.image, patch=case.patch, stride=case.stride, color=case.color
    )
    plan.optimized.plan.verify()


@settings(max_examples=examples(150))
@given(case=nd_cases(1), strategy=STRATEGIES)
def test_signal_heatmaps_equal_the_oracle(case: Case, strategy: str) -> None:
    _check(case, strategy)


@settings(max_examples=examples(100))
@given(case=nd_cases(3), strategy=STRATEGIES)
def test_volume_heatmaps_equal_the_oracle(case: Case, strategy: str) -> None:
    _check(case, strategy)


@settings(max_examples=examples(10))
@given(case=st.sampled_from([1, 3]).flatmap(nd_cases))
def test_batches_and_raw_outputs(case: Case) -> None:
    """A batch of inputs gives one heatmap each, for probabilities and raw outputs alike."""
    inputs = torch.stack([case.image, -case.image])
    occlusion = dict(patch=case.patch, stride=case.stride, color=case.color)
    expected = oracle.run(case.model, inputs, **occlusion)
    for score in ("prob", "logit"):
        got = kql.occlusion_heatmap(case.model, inputs, score=score, progress=False, **occlusion)
        assert_matches_oracle(got, case.model, inputs, score=score, expected=expected, **occlusion)


def _signal_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip


def _volume_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip


def test_the_number_of_axes_comes_from_the_patch_or_spatial_dims() -> None:
    """A tuple patch states the axes; ``spatial_dims`` does for an int patch; a rank-2 input
    with an int patch is one signal and rank 5 a batch of volumes."""
    signal, volume = torch.randn(2, 24), torch.randn(1, 8, 8, 8)
    model1, model3 = _signal_model(), _volume_model()
    by_tuple = kql.occlusion_heatmap(model1, signal, patch=(4,), stride=(4,), progress=False)
    by_rank = kql.occlusion_heatmap(model1, signal, patch=4, stride=4, progress=False)
    assert by_tuple.shape == by_rank.shape == (6,)
    assert torch.equal(by_tuple, by_rank)
    stated = kql.occlusion_heatmap(
        model3, volume, patch=4, stride=4, spatial_dims=3, progress=False
    )
    batch = kql.occlusion_heatmap(model3, volume[None], patch=4, stride=4, progress=False)
    assert stated.shape == (2, 2, 2) and batch.shape == (1, 2, 2, 2)
    assert torch.equal(stated, batch[0])
    assert_matches_oracle(stated, model3, volume, patch=(4, 4, 4), stride=4)


def test_a_shape_read_two_ways_gets_a_clear_error() -> None:
    """A rank-4 input with an int patch reads as a batch of images; a 3-D model rejects that
    and the error says how to ask for one volume."""
    volume = torch.randn(1, 8, 8, 8)
    with pytest.raises(kql.KryptonError, match="spatial_dims=3"):
        kql.occlusion_heatmap(_volume_model(), volume, patch=4, stride=4, progress=False)
    with pytest.raises(kql.KryptonError, match="patch"):
        kql.occlusion_heatmap(_volume_model(), volume, patch=(4, 4), stride=4, progress=False)
    with pytest.raises(kql.KryptonError, match="spatial_dims"):
        kql.occlusion_heatmap(
            _volume_model(), volume, patch=(4, 4, 4), spatial_dims=2, progress=False
        )


def test_naive_re_inference_occludes_every_rank() -> None:
    """The naive baseline agrees with the oracle on a signal and a volume."""
    for model, x, patch in ((_signal_model(), torch.randn(2, 20), (3,)),
                            (_volume_model(), torch.randn(1, 6, 7, 8), (2, 3, 2))):  # fmt: skip
        naive = kql.naive_heatmap(model, x, patch=patch, stride=2, color=0.3, progress=False)
        assert_matches_oracle(naive, model, x, patch=patch, stride=2, color=0.3)


def test_what_stays_two_dimensional_refuses_other_ranks_by_name() -> None:
    """The plan as SQL and drill-down name the rank they do not cover; τ takes any rank."""
    plan = kql.compile(_volume_model(), (1, 8, 8, 8), patch=4, stride=4, spatial_dims=3)
    refusal = "no relational form: node input: the plan as SQL covers maps of rows and columns"
    assert refusal in plan.explain(sql=True)
    with pytest.raises(kql.KryptonError, match="this plan's input has 3 spatial axes"):
        plan.sql_heatmap(torch.rand(1, 8, 8, 8))
    with pytest.raises(kql.KryptonError, match="drill-down refines heatmaps of images"):
        kql.compile(_signal_model(), (2, 32), patch=4, stride=2, drilldown=0.5)
    assert "≈" in kql.compile(_signal_model(), (2, 32), patch=4, stride=2, tau=0.1).explain()


def test_volume_views_that_do_not_fit_end_in_the_memory_error(monkeypatch) -> None:
    """The clean volume's views are checked before the clean forward, and the error says how
    much memory they need and how much there is."""
    from runtime import memory

    plan = kql.compile(_volume_model(), (1, 16, 16, 16), patch=4, stride=4, spatial_dims=3)
    views = memory.view_bytes(plan.physical, 1, 4)
    monkeypatch.setattr(memory, "available", lambda device: views // 2)
    with pytest.raises(memory.OutOfMemoryError, match=r"views of 1 image\(s\).*is available"):
        plan.run(torch.rand(1, 16, 16, 16), progress=False)
