"""``build_plan``: the plan that validated ``Options`` ask for — one occlusion plan, two stages
of drill-down, a coarse-to-fine refinement, or a τ or drill-down plan checked by the quality
guard of an ``ssim`` target; with the planner's choice at the head of its explain."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor, nn

from compiler.drilldown import DrillDownMode
from krypton_ql import options as check
from krypton_ql.options import Options
from krypton_ql.plans.base import HeatmapPlan, OcclusionResult, ProgressArg, WrappingPlan
from krypton_ql.plans.drilldown import DrillDownPlan
from krypton_ql.plans.guarded import GuardedPlan
from krypton_ql.plans.occlusion import OcclusionPlan
from krypton_ql.plans.refine import RefinePlan
from krypton_ql.quality.planner import Choice
from runtime.fill import Fill


def build_plan(model: nn.Module, options: Options) -> HeatmapPlan:
    """The plan of validated ``options``: an ``OcclusionPlan``, or a ``DrillDownPlan`` of two
    stages when ``options.drilldown`` asks for one (lattice mode runs the fine plan twice),
    a ``RefinePlan`` for ``options.refine``, inside a ``GuardedPlan`` when ``options.guard``
    asks for one; a ``ChosenPlan`` shows what an ``ssim`` target chose."""
    check.model(model)
    plan: HeatmapPlan
    bare = dataclasses.replace(options, guard=None, refine=None, choice=None)
    if options.refine is not None:
        plan = RefinePlan(model, options, _unguarded(model, bare))
    elif options.guard is not None:
        plan = GuardedPlan(model, options, _unguarded(model, bare))
    else:
        plan = _unguarded(model, options)
    return plan if options.choice is None else ChosenPlan(plan, options.choice)


def _unguarded(model: nn.Module, options: Options) -> HeatmapPlan:
    settings = options.drilldown
    if settings is None:
        return OcclusionPlan(model, options)
    fine = OcclusionPlan(model, options.stage(settings.fine))
    if settings.mode is DrillDownMode.LATTICE:
        return DrillDownPlan(None, fine, settings)
    return DrillDownPlan(OcclusionPlan(model, options.stage(settings.coarse)), fine, settings)


class ChosenPlan(WrappingPlan):
    """The plan an ``ssim`` target chose (``quality.planner``): runs ``plan``; its explain
    starts with the choice — the alternatives weighed and their predicted speedups."""

    def __init__(self, plan: HeatmapPlan, choice: Choice) -> None:
        self.inner, self.choice = plan, choice

    def __getattr__(self, name: str) -> Any:  # the chosen plan's own (last_reruns, …)
        plan = self.__dict__.get("inner")
        if plan is None:  # not built yet (a copy, an unpickling)
            raise AttributeError(name)
        return getattr(plan, name)

    @property
    def theoretical_speedup(self) -> float:
        return self.inner.theoretical_speedup

    def explain(self, verbose: bool = False, sql: bool = False) -> str:
        return self.choice.explain() + "\n\n" + self.inner.explain(verbose, sql)

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
        return self.inner.evaluate(image, targets=targets, positions=positions,
                                  progress=progress, reuse_clean=reuse_clean,
                                  fill=fill)  # fmt: skip
