"""``build_plan``: the plan that validated ``Options`` ask for — one occlusion plan, two stages
of drill-down, or either checked by the quality guard of an ``ssim`` target."""

from __future__ import annotations

import dataclasses

from torch import nn

from compiler.drilldown import DrillDownMode
from krypton_ql import options as check
from krypton_ql.options import Options
from krypton_ql.plans.base import HeatmapPlan
from krypton_ql.plans.drilldown import DrillDownPlan
from krypton_ql.plans.guarded import GuardedPlan
from krypton_ql.plans.occlusion import OcclusionPlan


def build_plan(model: nn.Module, options: Options) -> HeatmapPlan:
    """The plan of validated ``options``: an ``OcclusionPlan``, or a ``DrillDownPlan`` of two
    stages when ``options.drilldown`` asks for one (lattice mode runs the fine plan twice),
    inside a ``GuardedPlan`` when ``options.guard`` asks for one."""
    check.model(model)
    if options.guard is not None:
        inner = _unguarded(model, dataclasses.replace(options, guard=None))
        return GuardedPlan(model, options, inner)
    return _unguarded(model, options)


def _unguarded(model: nn.Module, options: Options) -> HeatmapPlan:
    settings = options.drilldown
    if settings is None:
        return OcclusionPlan(model, options)
    fine = OcclusionPlan(model, options.stage(settings.fine))
    if settings.mode is DrillDownMode.LATTICE:
        return DrillDownPlan(None, fine, settings)
    return DrillDownPlan(OcclusionPlan(model, options.stage(settings.coarse)), fine, settings)
