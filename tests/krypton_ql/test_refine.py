"""Approximation that picks its plan: coarse-to-fine refinement (``plans.refine``), the planner
(``quality.planner``), tuning that replays refinements, and the shipped profile."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

import krypton_ql as kql
from compiler import drilldown as drill
from krypton_ql import models, quality
from krypton_ql.options import Refine
from krypton_ql.plans import tuning
from krypton_ql.plans.refine import coarse_to_fine
from krypton_ql.quality import planner
from tests import oracle
from tests.helpers import small_cnn


class Counting:
    """A lookup into a stored map that fails on any cell asked for twice."""

    def __init__(self, values: np.ndarray) -> None:
        self.values, self.asked = values.reshape(1, -1), np.zeros(values.size, dtype=bool)

    def __call__(self, cells: np.ndarray) -> np.ndarray:
        assert not self.asked[cells].any(), "a cell computed twice"
        self.asked[cells] = True
        return self.values[:, cells]


def _smooth(size: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.sin(3 * yy) + np.cos(2 * xx) - 2 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.4) ** 2) * 20)


def test_a_smooth_map_stops_early_and_a_rough_one_ends_exact() -> None:
    smooth = _smooth()
    lookup = Counting(smooth)
    done = coarse_to_fine(smooth.shape, Refine(0.95, 6.0), lookup)
    assert quality.ssim(smooth, done.heatmaps[0]) >= 0.95
    assert done.exact_queries == lookup.asked.sum() < 0.35 * smooth.size and done.queries == 0
    assert np.array_equal(done.heatmaps[0][done.known], smooth[done.known])  # computed = exact
    assert done.estimate == done.estimates[-1] >= 0.95
    rough = np.random.default_rng(0).normal(size=(24, 24))
    lookup = Counting(rough)
    done = coarse_to_fine(rough.shape, Refine(0.99, 4.0), lookup)
    assert done.exact_all and done.known.all() and lookup.asked.all()  # each cell once
    assert np.array_equal(done.heatmaps[0], rough) and done.estimate == 1.0
    assert len(done.estimates) >= 2  # it refined round by round on the way


def test_over_a_tau_map_only_the_difference_is_interpolated() -> None:
    """A base map that carries the fine structure (here: the truth minus a smooth field):
    the same lattice reconstructs far better than without it, the base runs at every cell."""
    truth = _smooth() + np.random.default_rng(1).normal(scale=0.3, size=(40, 40))
    base = truth - 0.5 * _smooth()
    alone = coarse_to_fine(truth.shape, Refine(0.0, 6.0), Counting(truth))
    over = coarse_to_fine(truth.shape, Refine(0.0, 6.0), Counting(truth), Counting(base))
    assert over.queries == truth.size and over.exact_queries == alone.exact_queries
    assert quality.ssim(truth, over.heatmaps[0]) > 0.99 > quality.ssim(truth, alone.heatmaps[0])


def test_the_lattice_and_its_reconstruction_take_any_number_of_axes() -> None:
    signal = np.sin(np.arange(60) / 5.0)
    known = drill.lattice((60,), 3)
    assert known.sum() == 20
    rebuilt = drill.reconstruct(signal, known)
    assert np.abs(rebuilt - signal)[:58].max() < 0.03  # between samples (58, 59: past the last)
    volume = np.add.outer(np.add.outer(np.arange(8.0), np.arange(9.0)), np.arange(10.0))
    known = drill.lattice(volume.shape, 4)
    assert abs(known.mean() - 0.25) < 0.02
    assert np.allclose(drill.reconstruct(volume, known), volume, atol=1e-6)  # linear: exact


def test_a_refine_plan_computes_cells_exactly_and_meets_a_strict_target() -> None:
    """Against the oracle (naive re-inference, independent of the engine): the computed cells
    hold exact scores; at SSIM 0.999 each heatmap meets it (its estimate says so, or it ended
    exact); explain shows the refinement."""
    torch.manual_seed(2)
    model, images = small_cnn(), torch.rand(2, 3, 24, 24)
    truth = oracle.heatmap(model, images, 4, 1).numpy()
    options = kql.options.Options.build((3, 24, 24), patch=4, stride=1)
    options = dataclasses.replace(options, refine=Refine(0.999, 4.0))
    plan = kql.plans.build.build_plan(model, options)
    result = plan.evaluate(images, progress=False)
    assert "coarse-to-fine refinement: SSIM ≥ 0.999" in plan.explain()
    for n, outcome in enumerate(plan.last_outcomes):
        got = result.heatmaps[n, 0].numpy()
        assert np.allclose(got[outcome.known], truth[n][outcome.known], atol=1e-5)
        assert quality.ssim(truth[n], got) >= 0.995
        assert float(result.ssim_estimate[n, 0]) >= 0.999
    assert result.queries == sum(o.exact_queries for o in plan.last_outcomes) <= 2 * 21 * 21


def _profile(**changes: object) -> kql.Profile:
    profile = kql.Profile(4, 2, "min", taus={"1": [1.0] * 4, "0.6": [0.97, 0.96, 0.95, 0.94]})
    profile.costs = {"1": 1.0, "0.6": 0.7}
    profile.refine_target = 0.9
    cheap = {"ssim": [0.93, 0.92, 0.95, 0.91], "queries": [0.0] * 4, "exact": [0.3] * 4,
             "overhead": [0.01] * 4, "estimate": [0.92] * 4}  # fmt: skip
    poor = {**cheap, "ssim": [0.95, 0.7, 0.95, 0.95], "exact": [0.1] * 4}
    profile.refine = {"4": cheap, "8": poor}
    for name, value in changes.items():
        setattr(profile, name, value)
    return profile


def test_the_planner_chooses_the_cheapest_plan_that_meets_the_target() -> None:
    choice = planner.choose(_profile(), 0.9)
    names = {c.name: c for c in choice.candidates}
    assert choice.chosen.name == "coarse-to-fine from 1/4" and choice.chosen.period == 4.0
    assert names["coarse-to-fine from 1/4"].cost == pytest.approx(0.31)
    assert not names["coarse-to-fine from 1/8"].qualifies  # cheaper, but one sample at 0.7
    assert names["τ=0.6"].cost == pytest.approx(0.7 + planner.GUARD_SAMPLE)
    text = choice.explain()
    assert "→ ≈ coarse-to-fine from 1/4" in text and "3.23×" in text and "(misses)" in text
    # a stricter target than the refinements were replayed at: only τ and exact remain
    stricter = planner.choose(_profile(), 0.95)
    assert stricter.chosen.name == "exact"  # τ=0.6's worst, 0.94, misses 0.95 + margin
    assert "no approximation" in stricter.reason
    # nothing predicted MIN_GAIN faster: exact, and it says why
    slow = _profile(refine={}, costs={"1": 1.0, "0.6": 0.85})
    chosen = planner.choose(slow, 0.9)
    assert chosen.chosen.name == "exact" and "under the 1.15×" in chosen.reason


def test_an_ssim_target_runs_the_chosen_plan_and_explains_the_choice() -> None:
    torch.manual_seed(4)
    model, images = small_cnn(), torch.rand(2, 3, 20, 20)
    plan = kql.compile(model, (3, 20, 20), patch=4, stride=2, ssim=0.9, profile=_profile())
    text = plan.explain()
    assert text.startswith("== ≈ quality target: SSIM ≥ 0.9 per heatmap → ≈ coarse-to-fine")
    assert "== ≈ coarse-to-fine refinement: SSIM ≥ 0.9 per heatmap ==" in text
    result = plan.evaluate(images, progress=False)
    exact = oracle.heatmap(model, images, 4, 2).numpy()
    for n in range(2):
        assert quality.ssim(exact[n], result.heatmaps[n, 0].numpy()) >= 0.85
    with pytest.raises(kql.KryptonError, match="guard=False: the chosen coarse-to-fine"):
        kql.compile(model, (3, 20, 20), patch=4, stride=2, ssim=0.9, profile=_profile(),
                    guard=False)  # fmt: skip
    slow = _profile(refine={}, costs={"1": 1.0, "0.6": 0.85})
    plan = kql.compile(model, (3, 20, 20), patch=4, stride=2, ssim=0.9, profile=slow)
    assert "→ exact ==" in plan.explain() and "≈threshold" not in plan.explain()
    assert torch.allclose(plan.run(images, progress=False), torch.from_numpy(exact).float(),
                          atol=1e-5)  # fmt: skip


def test_tune_replays_refinements_from_one_exact_run() -> None:
    torch.manual_seed(3)
    model, images = small_cnn(), torch.rand(3, 3, 20, 20)
    profile = kql.tune(model, images, ssim=0.9, patch=4, stride=1, taus=(0.6, 0.3),
                       periods=(3.0, 6.0))  # fmt: skip
    assert set(profile.costs) == {"1", "0.6", "0.3"} and profile.costs["1"] == 1.0
    assert {"3", "6"} <= set(profile.refine) and profile.refine_target == 0.9
    truth = oracle.heatmap(model, images, 4, 1).numpy()
    for n in range(3):  # the replay is the algorithm on the exact maps: rerun it, compare
        again = coarse_to_fine(truth[n].shape, Refine(0.9, 3.0, profile.check),
                               lambda c, n=n: truth[n].reshape(1, -1)[:, c], seed=n)  # fmt: skip
        ssim = quality.ssim(truth[n], again.heatmaps[0])
        assert profile.refine["3"]["ssim"][n] == pytest.approx(ssim, abs=1e-4)
        assert profile.refine["3"]["exact"][n] == again.exact_queries / truth[n].size
    restored = kql.Profile.from_json(profile.to_json())
    assert restored.refine == profile.refine and restored.costs == profile.costs
    older = json.loads(profile.to_json())
    for key in ("costs", "refine", "refine_target", "check", "made_by"):
        del older[key]
    legacy = kql.Profile.from_json(json.dumps(older))
    plan = kql.compile(model, (3, 20, 20), patch=4, stride=1, ssim=0.9, profile=legacy)
    assert "quality target" not in plan.explain()  # chosen as before: the smallest τ


def test_the_built_in_model_ships_its_profile() -> None:
    """Tuning the built-in model on the default set at patch 16, stride 4 returns the shipped
    profile at once; it says how it was made, and serves an ssim target with no profile."""
    model = models.efficientnet_lite0()
    began = time.perf_counter()
    profile = kql.tune(model, ssim=0.9, patch=16, stride=4)
    assert time.perf_counter() - began < 30
    assert profile.made_by is not None and "benchmarks.ship_profile" in profile.made_by
    assert profile.images == len(kql.tuning_images()) and profile.refine_target == 0.9
    assert profile.model == tuning._described(model)
    given = kql.tune(model, kql.tuning_images(), ssim=0.9, patch=16, stride=4)
    assert given.to_json() == profile.to_json()  # the default set, passed: the same profile
    assert tuning.shipped(model, 16, 8, [3, 224, 224]) is None  # another grid: tune it
    plan = kql.compile(model, (3, 224, 224), patch=16, stride=4, ssim=0.9)
    assert "quality target: SSIM ≥ 0.9" in plan.explain()
    with torch.no_grad():
        model._fc.bias.add_(1.0)  # other weights: the shipped profile does not fit
    assert tuning.shipped(model, 16, 4, [3, 224, 224]) is None
