"""Every way a heatmap is computed, behind one interface (``HeatmapPlan``: ``evaluate``,
``run``, ``explain``).

``occlusion``: one compiled workload (export → import → rewrite → lower → execute);
``drilldown``: two stages of occlusion plans (coarse everywhere, fine where it matters);
``guarded``: an approximate plan checked against exact samples per image; ``build``: the plan
``Options`` ask for; ``naive``: full re-inference, the baseline and an independent oracle;
``tuning``: ``kql.tune``, which measures plans on sample images to choose τ for a target.
"""

from krypton_ql.plans.base import HeatmapPlan, OcclusionResult
from krypton_ql.plans.build import build_plan
from krypton_ql.plans.drilldown import DrillDownPlan
from krypton_ql.plans.guarded import GuardedPlan
from krypton_ql.plans.occlusion import OcclusionPlan

__all__ = [
    "DrillDownPlan", "GuardedPlan", "HeatmapPlan", "OcclusionPlan", "OcclusionResult",
    "build_plan",
]  # fmt: skip
