"""The plan an ``ssim`` target runs: the cheapest one predicted to meet it, or exact.

A tuning profile (``kql.tune``) measured, on its sample images against exact heatmaps, every
candidate's quality and cost:

- **τ alone**, guarded (``plans.guarded``): the τ plan's time per query over exact's (measured),
  plus the guard's exact samples, plus an exact re-run for each sample image below the target.
  It qualifies, as ``Profile.tau_for`` has it, when its worst sample clears the target by the
  profile's margin.
- **coarse-to-fine refinement** (``plans.refine``) from a lattice of one cell in 2, 3, 4, 6 or
  8, alone or over a τ plan: the replayed refinement's positions (approximate and exact) and
  its reconstruction time, per sample image. It qualifies when at least ``SHARE`` of the
  samples end at the target and none more than ``SLACK`` below it.
- **drill-down** (profiles tuned with ``drilldown=``): the query ratio at the profile's τ, plus
  the guard, plus re-runs.

The cheapest qualifying candidate runs if it is predicted at least ``MIN_GAIN`` times faster
than exact; otherwise exact runs, and explain says so. Costs are fractions of an exact run's
time on the machine that tuned (a shipped profile says which).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from krypton_ql.quality.profile import Profile

MIN_GAIN = 1.15  # an approximation must be predicted this much faster than exact to run
SHARE = 0.95  # of the samples at the target, at the least (a refinement)
SLACK = 0.05  # and none further below it than this
GUARD_SAMPLE = 0.04  # the τ guard's exact samples (``options.Guard.sample``)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One plan the planner weighed: its predicted time as a fraction of exact's, and how its
    sample images fared against the target."""

    name: str
    cost: float  # predicted time over an exact run's
    share: float  # of the sample images at the target
    worst: float  # the worst sample image's SSIM
    qualifies: bool
    tau: float = 1.0
    period: float | None = None  # a refinement's first lattice
    speedup: float | None = None  # a drill-down's target

    @property
    def gain(self) -> float:
        """Predicted speedup over exact."""
        return 1.0 / self.cost


@dataclass(frozen=True, slots=True)
class Choice:
    """What an ``ssim`` target chose, among which alternatives, and why."""

    target: float
    chosen: Candidate
    candidates: tuple[Candidate, ...]
    reason: str

    def explain(self) -> str:
        """The choice as explain prints it: every candidate with its predicted speedup over
        exact, its samples at the target and its worst sample.

        >>> exact = Candidate("exact", 1.0, 1.0, 1.0, True)
        >>> tau = Candidate("τ=0.8", 0.8, 1.0, 0.95, True, tau=0.8)
        >>> print(Choice(0.9, exact, (exact, tau), "nothing is 1.15× faster").explain())
        == ≈ quality target: SSIM ≥ 0.9 per heatmap → exact ==
        nothing is 1.15× faster
        candidate                          predicted  samples ≥ target  worst
          τ=0.8                              1.25×              100%  0.950
          exact                              1.00×              100%  1.000  ← chosen
        """
        approximate = "" if self.chosen.name == "exact" else "≈ "
        lines = [
            f"== ≈ quality target: SSIM ≥ {self.target:g} per heatmap → "
            f"{approximate}{self.chosen.name} ==",
            self.reason,
            f"{'candidate':<34} predicted  samples ≥ target  worst",
        ]
        for c in sorted(self.candidates, key=lambda c: c.cost):
            mark = "  ← chosen" if c is self.chosen else ("" if c.qualifies else "  (misses)")
            lines.append(f"  {c.name:<32} {c.gain:6.2f}×  {c.share:16.0%}  {c.worst:.3f}{mark}")
        return "\n".join(lines)


def candidates(profile: Profile, target: float, grid_fits: bool = True) -> list[Candidate]:
    """Every candidate the profile measured, with its predicted cost at ``target``; the
    refinements only where the workload's grid is the one they were replayed on
    (``grid_fits``)."""
    found = [Candidate("exact", 1.0, 1.0, 1.0, True)]
    cost_of = {float(key): value for key, value in profile.costs.items()}
    for key, scores in profile.taus.items():
        tau = float(key)
        if tau >= 1.0 or tau not in cost_of:
            continue
        below = _share(scores, target, below=True)
        cost = cost_of[tau] + GUARD_SAMPLE + below
        qualifies = profile.score(scores) >= target + profile.margin - 1e-12
        found.append(Candidate(f"τ={tau:g}", cost, 1 - below, min(scores), qualifies, tau=tau))
    tuned = profile.refine_target
    if grid_fits and tuned is not None and target <= tuned + 1e-12:
        for key, runs in profile.refine.items():
            period, _, tau_key = key.partition("@")
            tau = float(tau_key or 1.0)
            if tau not in cost_of:
                continue
            per_image = (
                np.asarray(runs["queries"]) * cost_of[tau]
                + np.asarray(runs["exact"])
                + np.asarray(runs["overhead"])
            )
            scores = runs["ssim"]
            share = _share(scores, target)
            qualifies = share >= SHARE and min(scores) >= target - SLACK
            name = f"coarse-to-fine from 1/{float(period):g}" + (f" + τ={tau:g}" if tau < 1 else "")
            found.append(Candidate(name, float(per_image.mean()), share, min(scores), qualifies,
                                   tau=tau, period=float(period)))  # fmt: skip
    chosen_tau = profile.tau_for(target)
    if profile.drilldown_ratio is not None and chosen_tau in cost_of:
        for key, scores in profile.drilldown.items():
            below = _share(scores, target, below=True)
            cost = cost_of[chosen_tau] / float(key) + GUARD_SAMPLE + below
            name = f"drill-down {float(key):g}×" + (
                f" + τ={chosen_tau:g}" if chosen_tau < 1 else ""
            )
            qualifies = profile.score(scores) >= target
            found.append(Candidate(name, cost, 1 - below, min(scores), qualifies,
                                   tau=chosen_tau, speedup=float(key)))  # fmt: skip
    return found


def choose(profile: Profile, target: float, grid_fits: bool = True) -> Choice:
    """The cheapest qualifying candidate predicted ``MIN_GAIN``× faster than exact, else exact
    (``grid_fits``: as ``candidates`` has it)."""
    found = candidates(profile, target, grid_fits)
    exact = found[0]
    fast = [c for c in found[1:] if c.qualifies and c.gain >= MIN_GAIN]
    if fast:
        best = min(fast, key=lambda c: c.cost)
        reason = (f"the cheapest of {len(found) - 1} approximations whose samples meet the target "
                  f"({profile.fitted()})")  # fmt: skip
        return Choice(target, best, tuple(found), reason)
    qualifying = [c for c in found[1:] if c.qualifies]
    if qualifying:
        best = min(qualifying, key=lambda c: c.cost)
        reason = (f"exact: the fastest approximation that meets the target, {best.name}, is "
                  f"predicted {best.gain:.2f}× — under the {MIN_GAIN:g}× an approximation must "
                  "gain to be worth its risk")  # fmt: skip
    else:
        reason = "exact: no approximation measured on the samples meets the target"
    return Choice(target, exact, tuple(found), reason)


def _share(scores: list[float], target: float, below: bool = False) -> float:
    values = np.asarray(scores)
    return float(np.mean(values < target if below else values >= target))
