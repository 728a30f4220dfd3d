"""Approximation on volumes and signals: τ caps every layer's box along each axis on its own,
SSIM is computed in the heatmap's own axes (a 7×7×7 window on a volume), and tuning and the
quality guard take volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import krypton_ql as kql
from compiler.types import Size
from krypton_ql import quality


def _two_convs_3d() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.Conv3d(4, 4, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def test_tau_caps_each_axis_of_a_volume_on_its_own() -> None:
    """A 32×32×12 volume, patch 8×8×1 at (12, 12, 4), τ = 0.25: depth and rows are cut as a
    32-cell axis with an 8-cell patch is, columns as a 12-cell axis with a 1-cell patch.
    conv1 (k3 s1 p1): depth/rows exact box 10 > cap round(0.25·32) = 8 → 8 around the centre
    16 (start 12, read 10, 2 cut); columns exact 3 = cap round(0.25·12) = 3 → uncut, start 3,
    read 5. conv2 (k3 s2 p1, 16×16×6 outputs): depth/rows exact 5 > cap 4 → 4 at 6, read 9;
    columns exact 3 > cap round(1.5) = 2 → 2 around 2.5: start 2, read 5."""
    plan = kql.compile(
        _two_convs_3d(), (1, 32, 32, 12), patch=(8, 8, 1), stride=(12, 12, 4), tau=0.25
    )
    query = 13  # positions (0, 12, 24)² × (0, 4, 8): index 9 + 3 + 1 is (12, 12, 4)
    assert [int(axis[query]) for axis in plan.positions.starts] == [12, 12, 4]
    nodes = {node.source.split(" ")[0]: node for node in plan.optimized.plan}
    expected = (("0", (8, 8, 3), (10, 10, 5), (2, 2, 0), (12, 12, 3)),
                ("1", (4, 4, 2), (9, 9, 5), (1, 1, 1), (6, 6, 2)))  # fmt: skip
    for name, box, read, cut, start in expected:
        update = nodes[name].update
        assert (update.box, update.read, update.cut) == (Size(*box), Size(*read), Size(*cut))
        origin = plan.optimized.origins[nodes[name].name]
        assert tuple(int(axis[query]) for axis in origin) == start, name
    assert "{≈recompute box=8×8×3 read=10×10×5 cut=2×2×0}" in plan.explain()


def test_ssim_is_taken_in_the_heatmaps_own_axes() -> None:
    """One window of 7 cells per axis: a volume's SSIM sees structure along depth that a mean
    over its slices cannot (the same slices in another depth order)."""
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(9, 12, 12)).cumsum(0)  # smooth along depth
    assert quality.ssim(volume, volume) == 1.0
    assert quality.ssim(volume, -volume) < 0.5
    shuffled = volume[rng.permutation(9)]
    per_slice = np.mean([quality.ssim(e, a) for e, a in zip(volume, volume)])
    assert per_slice == 1.0 and quality.ssim(volume, shuffled) < 0.9
    signal = np.sin(np.linspace(0, 6, 40))
    ripple = 0.5 * np.cos(np.linspace(0, 30, 40))  # fine structure the signal lacks
    assert quality.ssim(signal, signal) == 1.0 and quality.ssim(signal, signal + ripple) < 0.5
    with pytest.raises(kql.KryptonError, match="one shape"):
        quality.ssim(volume, volume[:-1])
    with pytest.raises(kql.KryptonError, match="at least 3 cells along every axis"):
        quality.ssim(volume[:, :2], volume[:, :2])
    with pytest.raises(kql.KryptonError, match="one, two or three axes"):
        quality.ssim(volume[None, None], volume[None, None])


def _volumes() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv3d(1, 6, 3, padding=1), nn.ReLU(),
        nn.Conv3d(6, 6, 3, padding=1), nn.ReLU(),
        nn.Conv3d(6, 6, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 2),
    ).eval()  # fmt: skip
    return model, torch.rand(3, 1, 12, 16, 16)


def test_tune_and_the_guard_take_volumes() -> None:
    """``kql.tune`` measures τ on volumes with 3-D SSIM against exact heatmaps computed
    separately; an ``ssim`` target then runs τ with the guard, whose estimate is per volume,
    and a target no τ meets ends exact."""
    model, volumes = _volumes()
    occlusion = dict(patch=(2, 4, 4), stride=2)
    profile = kql.tune(model, volumes, ssim=0.9, taus=(0.4, 0.2), **occlusion)
    assert profile.patch == [2, 4, 4] and profile.stride == 2
    exact = kql.occlusion_heatmap(model, volumes, progress=False, **occlusion)
    assert exact.shape == (3, 6, 7, 7)
    for tau in (0.4, 0.2):
        approx = kql.occlusion_heatmap(model, volumes, tau=tau, progress=False, **occlusion)
        measured = [quality.ssim(e, a) for e, a in zip(exact, approx)]
        assert profile.taus[f"{tau:g}"] == pytest.approx(measured, abs=1e-6)
        assert min(measured) < 1.0  # τ changed the heatmaps
    plan = kql.compile(model, volumes.shape, ssim=0.5, profile=profile, **occlusion)
    result = plan.evaluate(volumes, progress=False)
    assert result.ssim_estimate is not None and result.ssim_estimate.shape == (3, 1)
    strict = kql.compile(model, volumes.shape, ssim=0.99999, profile=profile, **occlusion)
    torch.testing.assert_close(strict.run(volumes, progress=False), exact, atol=1e-6, rtol=0)
    with pytest.raises(kql.KryptonError, match="tuned at patch"):
        kql.compile(model, volumes.shape, patch=4, stride=2, ssim=0.9, profile=profile)
