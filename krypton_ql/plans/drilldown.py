"""Adaptive drill-down plans: two stages of an exact (or τ) plan, the second only where the
score drops most (the stages' geometry and reconstruction: ``compiler.drilldown``).

Every approximation here is explicit: nothing approximates unless ``tau < 1``, ``drilldown``,
``speedup`` or ``ssim`` is asked for, and explain marks it ``≈``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from compiler import drilldown as drill
from compiler.drilldown import DrillDown, DrillDownMode
from krypton_ql import options as check
from krypton_ql.plans.base import HeatmapPlan, OcclusionResult, ProgressArg
from runtime.fill import Fill

log = logging.getLogger(__name__)


class DrillDownPlan(HeatmapPlan):
    """Two stages of occlusion queries (``compiler.drilldown``): stage 1
    everywhere at low density, stage 2 at the fine stride where the score drops most. Same
    interface as ``OcclusionPlan``; ``coarse`` is None in lattice mode (both stages run the
    fine plan)."""

    def __init__(self, coarse: HeatmapPlan | None, fine: HeatmapPlan, settings: DrillDown):
        self.coarse, self.fine, self.settings = coarse, fine, settings
        self.last_selected: np.ndarray | None = None  # [N, rows, cols]: cells run exactly

    @property
    def positions(self) -> Any:  # type: ignore[override]  # read-only: the fine grid's
        return self.fine.positions

    @property
    def occlusion(self) -> Any:
        return self.fine.occlusion

    @property
    def classes(self) -> int:
        return self.fine.classes

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
            assert self.coarse is not None  # grid mode has a coarse stage
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
        """Scores at every fine cell: sampled cells exact (or τ), the rest reconstructed.
        Drill-down plans the whole grid (its selection needs it): cells outside ``positions``
        are computed too, and the caller reads the ones it asked for."""
        images = check.images(image)
        settings, shape = self.settings, self.grid
        if settings.mode is DrillDownMode.LATTICE:
            known = drill.lattice(shape, settings.period)
            first = self.fine.evaluate(
                images,
                targets=targets,
                positions=_cells(known),
                progress=progress,
                reuse_clean=reuse_clean,
                fill=fill,
            )
        else:
            assert self.coarse is not None
            first = self.coarse.evaluate(
                images, targets=targets, progress=progress, reuse_clean=reuse_clean, fill=fill
            )
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
                fill=None if fill is None else fill.select(slice(n, n + 1), images.dim() - 2),
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
