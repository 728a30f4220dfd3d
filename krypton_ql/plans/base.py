"""What every compiled occlusion plan offers: ``HeatmapPlan``, and what one run computed.

``OcclusionPlan`` (``plans.occlusion``, one exact or τ plan) and ``DrillDownPlan``
(``plans.drilldown``, two stages of an inner ``OcclusionPlan``) implement it; the query
language, the CLI, tuning and the Captum drop-in use only this interface.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from compiler.boxes import Positions
from runtime.fill import Fill

ProgressArg = bool | str | Callable[[int, int], None]  # True, False, "auto" or a callback


@dataclass(frozen=True)
class OcclusionResult:
    """Everything one run computed."""

    heatmaps: Tensor  # [N, T, *grid]: scores with the patch at each position
    base: Tensor  # [N, T]: scores on the clean images
    targets: Tensor  # [N, T]: the class of each score
    queries: int  # occlusion queries executed
    # An ssim target's quality guard (``plans.guarded``; None without one): per heatmap
    # [N, T], the estimated SSIM against exact and the sampled largest |approx − exact| over
    # the clean score; how many images ran again.
    ssim_estimate: Tensor | None = None
    relative_error: Tensor | None = None
    reruns: int = 0


class HeatmapPlan(abc.ABC):
    """A compiled occlusion workload for images of one shape."""

    positions: Positions  # the patch positions, row-major over the heatmap grid
    from_cache: bool = False  # handed out by the plan cache (krypton_ql.plans.cache) again
    occlusion: Any  # the checked geometry: patch, stride, color, score

    @property
    @abc.abstractmethod
    def classes(self) -> int:
        """How many classes the model scores."""

    @property
    @abc.abstractmethod
    def theoretical_speedup(self) -> float:
        """The plan's predicted speedup over naive re-inference (FMA and query ratios)."""

    @abc.abstractmethod
    def explain(self, verbose: bool = False, sql: bool = False) -> str:
        """The plan as text."""

    @abc.abstractmethod
    def evaluate(
        self,
        image: Tensor,
        *,
        targets: Tensor | None = None,
        positions: Tensor | None = None,
        progress: ProgressArg = "auto",
        reuse_clean: bool = False,
        fill: Fill | None = None,
    ) -> OcclusionResult:
        """Scores of every target at every position (or the ``positions`` given);
        ``reuse_clean`` keeps the clean forward's views for the next call on the same images;
        ``fill`` (``kql.Fill``) replaces the colour as the windows' content."""

    def explain_png(self, path: Any, measured: float | None = None) -> Any:
        """The plan as a picture (``krypton_ql.render.plan_png``): each layer's update box to
        scale inside its feature map and its multiply-adds, naive against incremental."""
        from krypton_ql.render import plan_png

        return plan_png(self, path, measured)

    @property
    def grid(self) -> tuple[int, ...]:
        return self.positions.grid

    def run(
        self, image: Tensor, *, progress: ProgressArg = "auto", fill: Fill | None = None
    ) -> Tensor:
        """The heatmap ``[*grid]`` (one axis per spatial axis: ``[rows, cols]`` of an image) of
        one input, ``[N, *grid]`` of a batch (the first target's: the compiled one, else the
        predicted class); ``fill`` as in ``evaluate``."""
        result = self.evaluate(image, progress=progress, fill=fill)
        heatmaps = result.heatmaps[:, 0]
        return heatmaps[0] if image.dim() == self.positions.d + 1 else heatmaps


class WrappingPlan(HeatmapPlan):
    """A plan around another, ``inner`` (a guard, a refinement, a planner's choice): the
    positions, geometry and classes are the inner plan's."""

    inner: HeatmapPlan

    @property
    def positions(self) -> Any:  # type: ignore[override]  # read-only: the inner plan's
        return self.inner.positions

    @property
    def occlusion(self) -> Any:
        return self.inner.occlusion

    @property
    def classes(self) -> int:
        return self.inner.classes
