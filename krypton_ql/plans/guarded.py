"""The per-image quality guard of an ``ssim`` target: a plan that checks what it promised.

A tuning profile's τ met the target on the tuning images; on another image it may not. After
the approximate run, ``GuardedPlan`` runs the exact plan at a small random sample of the
positions (``Guard.sample``, 4% by default, at least ``MIN_SAMPLES``; the same positions for
every image of a batch), estimates each heatmap's SSIM against exact from them
(``quality.ssim_estimate``), and runs the images whose estimate is below the target again at the
next τ of the guard's ladder — the profile's larger τs, ending at exact. The exact samples are
reused at every rung, so a rung costs only its approximate run. The result carries each
heatmap's ``ssim_estimate`` (1 for a heatmap that ended exact), its ``relative_error`` (the
largest sampled ``|approx − exact|`` over the clean score) and how many images re-ran.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from krypton_ql import options as check
from krypton_ql.options import Options
from krypton_ql.plans.base import HeatmapPlan, OcclusionResult, ProgressArg, WrappingPlan
from krypton_ql.plans.occlusion import OcclusionPlan
from krypton_ql.quality import metrics as quality
from runtime.fill import Fill

MIN_SAMPLES = 16  # exact positions sampled per heatmap, at the least


class GuardedPlan(WrappingPlan):
    """An approximate plan (``inner``: ``options`` without the guard) whose every heatmap is
    checked against exact samples (see the module docstring)."""

    def __init__(self, model: nn.Module, options: Options, inner: HeatmapPlan) -> None:
        assert options.guard is not None
        # A drill-down is guarded by the exact plan alone: every rung is a one-stage plan.
        assert options.drilldown is None or options.guard.ladder == (1.0,)
        self.model, self.options, self.guard = model, options, options.guard
        self.inner = inner
        self._plans: dict[float, HeatmapPlan] = {}
        self.last_reruns = 0  # images of the last evaluate that ran again, at any rung

    @property
    def theoretical_speedup(self) -> float:
        """The approximate plan's (re-runs and the exact samples come on top, when needed)."""
        return self.inner.theoretical_speedup

    def explain(self, verbose: bool = False, sql: bool = False) -> str:
        ladder = " → ".join("exact" if t >= 1 else f"τ={t:g}" for t in self.guard.ladder)
        header = (
            f"== ≈ quality guard: SSIM ≥ {self.guard.target:g} per image ==\n"
            f"exact scores at {self.sample_size(len(self.positions))} of {len(self.positions)} "
            f"positions estimate each heatmap's SSIM; below the target it runs again: {ladder}\n"
            "\n"
        )
        return header + self.inner.explain(verbose, sql)

    def sample_size(self, total: int) -> int:
        return min(total, max(MIN_SAMPLES, math.ceil(self.guard.sample * total)))

    def plan(self, tau: float) -> HeatmapPlan:
        """The ladder's plan at ``tau`` (1: exact), compiled on first use."""
        if tau not in self._plans:
            options = dataclasses.replace(self.options, tau=tau, guard=None, drilldown=None)
            self._plans[tau] = OcclusionPlan(self.model, options)
        return self._plans[tau]

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
        first = self.inner.evaluate(image, targets=targets, positions=positions,
                                    progress=progress, reuse_clean=reuse_clean,
                                    fill=fill)  # fmt: skip
        images = check.images(image, self.options.shape)
        heatmaps = first.heatmaps.clone()
        count, kinds = heatmaps.shape[:2]
        cells = np.arange(heatmaps[0, 0].numel()) if positions is None else positions.cpu().numpy()
        rng = np.random.default_rng(0)
        chosen = np.sort(rng.choice(cells, self.sample_size(len(cells)), replace=False))
        exact = self.plan(1.0).evaluate(images, targets=first.targets, progress=False,
                                        positions=torch.as_tensor(chosen), fill=fill)  # fmt: skip
        truth = exact.heatmaps.reshape(count, kinds, -1)[:, :, chosen].float().cpu().numpy()
        base = first.base.float().cpu().numpy()
        queries = first.queries + exact.queries
        estimate, error = self._estimate(heatmaps, chosen, truth, base, cells)
        rerun: set[int] = set()
        for tau in self.guard.ladder:
            failing = sorted({int(n) for n, _ in np.argwhere(estimate < self.guard.target)})
            if not failing:
                break
            rerun.update(failing)
            index = torch.as_tensor(failing)
            again = self.plan(tau).evaluate(
                images[index], targets=first.targets[index], positions=positions, progress=False,
                fill=None if fill is None else fill.select(index, images.dim() - 2),
            )  # fmt: skip
            queries += again.queries
            heatmaps[index] = again.heatmaps.to(heatmaps.dtype)
            if tau >= 1.0:
                estimate[failing], error[failing] = 1.0, 0.0
            else:
                part = self._estimate(heatmaps[index], chosen, truth[failing], base[failing], cells)
                estimate[failing], error[failing] = part
        self.last_reruns = len(rerun)
        return dataclasses.replace(
            first,
            heatmaps=heatmaps,
            queries=queries,
            ssim_estimate=torch.from_numpy(estimate),
            relative_error=torch.from_numpy(error),
            reruns=len(rerun),
        )

    @staticmethod
    def _estimate(
        heatmaps: Tensor, chosen: np.ndarray, truth: np.ndarray, base: np.ndarray, cells: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per heatmap ``[N, T]``: the estimated SSIM and the sampled relative error."""
        count, kinds = heatmaps.shape[:2]
        estimate = np.ones((count, kinds))
        error = np.zeros((count, kinds))
        maps = heatmaps.float().cpu().numpy()
        for n in range(count):
            for t in range(kinds):
                approx = maps[n, t]
                estimate[n, t] = quality.ssim_estimate(approx, chosen, truth[n, t], cells)
                gap = np.abs(approx.reshape(-1)[chosen] - truth[n, t]).max()
                error[n, t] = gap / max(abs(float(base[n, t])), 1e-12)
        return estimate, error
