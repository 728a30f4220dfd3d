"""Approximate occlusion: adaptive drill-down plans, and tuning τ (and drill-down) to an SSIM
target on sample images.

Every approximation here is explicit: nothing approximates unless ``tau < 1``, ``drilldown``,
``speedup`` or ``ssim`` is asked for, and explain marks it ``≈``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compiler import drilldown as drill
from compiler.drilldown import DrillDown, DrillDownMode
from compiler.errors import InvalidInputError
from krypton_ql import options as check
from krypton_ql import quality
from krypton_ql.api import OcclusionPlan, OcclusionResult
from krypton_ql.api import compile as compile_plan

log = logging.getLogger(__name__)

DEFAULT_RATIO = 0.25  # the paper's default drill-down fraction (ImageNet)
DEFAULT_TARGET = 3.0  # the paper's default drill-down speedup
TAUS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)  # the paper's τ grid


def drilldown_settings(
    drilldown: Any, speedup: Any, stride: int, mode: DrillDownMode | str = DrillDownMode.GRID
) -> DrillDown | None:
    """Validated drill-down settings, or None when neither option is given."""
    if drilldown is None and speedup is None:
        return None
    ratio = check.fraction("drilldown", drilldown, default=DEFAULT_RATIO)
    assert ratio is not None
    if speedup is None:
        target = DEFAULT_TARGET
    elif isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or speedup <= 1:
        raise InvalidInputError(f"speedup must be a number greater than 1, got {speedup!r}")
    else:
        target = float(speedup)
    return DrillDown.plan(ratio, target, stride, DrillDownMode.parse(mode))


class DrillDownPlan:
    """Two stages of occlusion queries (``compiler.drilldown``): stage 1
    everywhere at low density, stage 2 at the fine stride where the score drops most. Same
    interface as ``OcclusionPlan``; ``coarse`` is None in lattice mode (both stages run the
    fine plan)."""

    def __init__(self, coarse, fine, settings: DrillDown):
        self.coarse, self.fine, self.settings = coarse, fine, settings
        self.positions = fine.positions
        self.logical = fine.logical
        self.occlusion = fine.occlusion
        self.physical = fine.physical
        self.runner = fine.runner
        self.last_selected: np.ndarray | None = None  # [N, rows, cols]: cells run exactly

    @property
    def grid(self) -> tuple[int, int]:
        return self.fine.grid

    @property
    def theoretical_speedup(self) -> float:
        """Predicted query ratio × the per-query FMA ratio of the (fine) plan."""
        return self.settings.predicted_speedup * self.fine.theoretical_speedup

    def explain(self, verbose: bool = False, sql: bool = False) -> str:
        s, (rows, cols) = self.settings, self.grid
        cells = rows * cols
        if s.mode is DrillDownMode.LATTICE:
            first = (
                f"stage 1: stride {s.fine} on a lattice of period {s.period:.3g} "
                f"(≈{math.ceil(cells / s.period)} of {cells} cells), thin-plate-spline "
                "reconstruction"
            )
        else:
            coarse_rows, coarse_cols = self.coarse.grid
            first = (
                f"stage 1: stride {s.coarse}, every position ({coarse_rows}×{coarse_cols} = "
                f"{coarse_rows * coarse_cols} queries), interpolated bilinearly to {rows}×{cols}"
            )
        header = [
            f"== ≈ adaptive drill-down ({s.mode.value}) ==",
            first,
            f"stage 2: stride {s.fine} at the {math.ceil(s.ratio * cells)} of {cells} cells "
            f"with the lowest scores (fraction {s.ratio:g})",
            f"predicted speedup {s.predicted_speedup:.2f}× in queries (target {s.target:g}×), "
            f"{self.theoretical_speedup:.2f}× with the plan's FMA ratio",
            "",
        ]
        text = "\n".join(header) + "\n"
        if self.coarse is not None:
            text += "== stage 1 plan ==\n" + self.coarse.explain(verbose, sql) + "\n"
            text += "== stage 2 plan ==\n"
        return text + self.fine.explain(verbose, sql)

    run = OcclusionPlan.run  # the first target's heatmaps, from ``evaluate``

    def evaluate(
        self,
        image: Tensor,
        *,
        targets: Tensor | None = None,
        positions: Tensor | None = None,
        progress: Any = "auto",
    ) -> OcclusionResult:
        """Scores at every fine cell: sampled cells exact (or τ), the rest reconstructed.
        ``positions`` is accepted for interface parity; drill-down always plans the whole grid
        (its selection needs it)."""
        images = check.images(image)
        settings, shape = self.settings, self.grid
        if settings.mode is DrillDownMode.LATTICE:
            known = drill.lattice(shape, settings.period)
            first = self.fine.evaluate(
                images, targets=targets, positions=_cells(known), progress=progress
            )
        else:
            first = self.coarse.evaluate(images, targets=targets, progress=progress)
        stage1 = first.heatmaps.detach().float().cpu().numpy()  # [N, T, rows', cols']
        heatmaps = np.empty((*stage1.shape[:2], *shape))
        selected, queries = [], first.queries
        for n in range(len(images)):  # each image refines its own cells (all its targets')
            if settings.mode is DrillDownMode.LATTICE:
                estimate = [drill.reconstruct(stage1[n, t], known) for t in range(len(stage1[n]))]
            else:
                known = np.zeros(shape, dtype=bool)
                estimate = [
                    drill.interpolate(m, settings.coarse, settings.fine, shape) for m in stage1[n]
                ]
            mask = np.logical_or.reduce([drill.lowest(e, settings.ratio, known) for e in estimate])
            second = self.fine.evaluate(
                images[n : n + 1],
                targets=first.targets[n : n + 1],
                positions=_cells(mask),
                progress=progress,
            )
            exact = second.heatmaps[0].detach().float().cpu().numpy()
            for t, values in enumerate(estimate):
                values[mask] = exact[t][mask]
                if settings.mode is DrillDownMode.LATTICE:  # reconstruct again from every sample
                    values[known] = stage1[n, t][known]
                    values = drill.reconstruct(values, known | mask)
                heatmaps[n, t] = values
            selected.append(known | mask)
            queries += second.queries
        self.last_selected = np.stack(selected)
        log.info(
            "drill-down (%s): %d queries for %d images × %d cells (predicted %.2f× fewer)",
            settings.mode,
            queries,
            len(images),
            shape[0] * shape[1],
            settings.predicted_speedup,
        )
        result = torch.as_tensor(heatmaps, dtype=torch.float32, device=first.heatmaps.device)
        return OcclusionResult(result, first.base, first.targets, queries)


def _cells(mask: np.ndarray) -> Tensor:
    return torch.as_tensor(np.flatnonzero(mask.ravel()))


@dataclass
class Profile:
    """What ``tune`` measured: for each τ tried, the SSIM of each sample image's heatmap against
    the exact one; optionally the same for drill-down speedup targets at the chosen τ.
    Serializable (``to_json`` / ``from_json`` / ``save`` / ``load``)."""

    patch: int
    stride: int
    criterion: str  # how one number is made of the samples' SSIMs: "min" or "mean"
    taus: dict[str, list[float]] = field(default_factory=dict)  # τ → SSIM per sample
    drilldown_ratio: float | None = None
    drilldown_mode: str = "lattice"
    drilldown: dict[str, list[float]] = field(default_factory=dict)  # target → SSIM per sample

    def score(self, values: list[float]) -> float:
        return float(np.min(values) if self.criterion == "min" else np.mean(values))

    def tau_for(self, target: float) -> float:
        """The smallest τ measured to meet ``target`` (1.0, exact, if none does)."""
        meeting = [float(t) for t, v in self.taus.items() if self.score(v) >= target]
        return min(meeting, default=1.0)

    def speedup_for(self, target: float) -> float | None:
        """The largest drill-down speedup target measured to meet ``target`` (None: none)."""
        meeting = [float(s) for s, v in self.drilldown.items() if self.score(v) >= target]
        return max(meeting, default=None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as error:
            raise InvalidInputError(f"not a krypton-ql tuning profile: {error}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        return cls.from_json(Path(path).read_text())


def tune(
    model: nn.Module,
    sample_images: Tensor,
    *,
    ssim: float = 0.9,
    patch: int = 16,
    stride: int = 4,
    taus: tuple[float, ...] = TAUS,
    criterion: str = "min",
    drilldown: float | None = None,
    drilldown_mode: str = "lattice",
    speedups: tuple[float, ...] = (5.0, 4.0, 3.0, 2.0),
    **options: Any,
) -> Profile:
    """Measure how τ (and, with ``drilldown=r``, drill-down speedup targets) trade quality on
    ``sample_images`` ``[N, C, H, W]``, and return the profile ``ssim=`` queries read.

    SSIM falls as τ falls, so a bisection over ``taus`` (sorted high to low) finds the smallest
    τ whose ``criterion`` over the samples (their minimum by default) meets ``ssim``, running
    about log2(len(taus)) approximate heatmaps per image instead of all of them; the exact
    heatmaps are computed once. With ``drilldown``, speedup targets are tried from the largest
    down at the chosen τ until one meets ``ssim``.
    """
    images = check.images(sample_images)
    target = check.fraction("ssim", ssim)
    assert target is not None
    if criterion not in ("min", "mean"):
        raise InvalidInputError(f"criterion must be 'min' or 'mean', got {criterion!r}")
    shape = tuple(images.shape[1:])
    exact = compile_plan(model, shape, patch=patch, stride=stride, **options).run(images)
    profile = Profile(patch, stride, criterion, drilldown_mode=drilldown_mode)

    def measure(tau: float) -> float:
        key = f"{tau:g}"
        if key not in profile.taus:
            plan = compile_plan(model, shape, patch=patch, stride=stride, tau=tau, **options)
            approx = plan.run(images)
            profile.taus[key] = [quality.ssim(e, a) for e, a in zip(exact, approx)]
            log.info("τ=%s: SSIM %s", key, profile.taus[key])
        return profile.score(profile.taus[key])

    ordered = sorted(taus, reverse=True)
    low, high = 0, len(ordered) - 1  # invariant: every τ before `low` meets the target
    profile.taus["1"] = [1.0] * len(images)
    while low <= high:
        middle = (low + high) // 2
        if measure(ordered[middle]) >= target:
            low = middle + 1
        else:
            high = middle - 1
    tau = profile.tau_for(target)
    if drilldown is not None:
        profile.drilldown_ratio = check.fraction("drilldown", drilldown)
        for speedup in sorted(speedups, reverse=True):
            plan = compile_plan(
                model, shape, patch=patch, stride=stride, tau=tau, drilldown=drilldown,
                speedup=speedup, drilldown_mode=drilldown_mode, **options,
            )  # fmt: skip
            approx = plan.run(images)
            scores = [quality.ssim(e, a) for e, a in zip(exact, approx)]
            profile.drilldown[f"{speedup:g}"] = scores
            if profile.score(scores) >= target:
                break
    return profile


def resolve_ssim(
    ssim: Any, profile: Any, patch: Any, tau: Any, drilldown: Any, speedup: Any, mode: str
) -> tuple[float | None, Any, Any, str]:
    """``(tau, drilldown, speedup, drilldown_mode)`` for an ``ssim`` target from a profile."""
    target = check.fraction("ssim", ssim)
    if tau is not None:
        raise InvalidInputError("give either tau or ssim (which chooses τ), not both")
    if not isinstance(profile, Profile):
        raise InvalidInputError(
            "ssim= needs a tuning profile: profile = kql.tune(model, sample_images, ssim=...), "
            "then pass profile=profile"
        )
    if (profile.patch, profile.patch) != (patch.h, patch.w):
        raise InvalidInputError(
            f"the profile was tuned at patch {profile.patch}, this workload uses patch {patch}"
        )
    assert target is not None
    chosen = profile.tau_for(target)
    if drilldown is None and speedup is None and profile.drilldown_ratio is not None:
        found = profile.speedup_for(target)
        if found is not None:
            drilldown, speedup, mode = profile.drilldown_ratio, found, profile.drilldown_mode
    return chosen, drilldown, speedup, mode
