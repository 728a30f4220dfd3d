"""push_delta_through_region_sum: ``Σ_R f(V ⊕ ΔA) = Σ_R f(V) + Σ_{box ∩ R} (f_new − f_old)``,
in weights: ``O(V ⊕ ΔA) = O(V) + s · Σ_{(y,x) ∈ box} (A_new − A_old)(c, y, x) · W(c, y, x)``
(exact).

Identity: a region aggregate (``RegionSum``: a weighted spatial sum) is linear in its map, and
the occluded map differs from the view only inside the update box, so the aggregate of the
occluded image is the view's aggregate plus the weighted sum of the difference over the box —
the textbook incremental SUM (a region mask's zeros drop the cells of the box outside the
region). The sibling of ``push_delta_through_global_pool`` (all weights ``1/HW``); it replaces
projecting the box into a full per-query map.
Precondition: the input is boxed. The output is a full (per-query) vector.
"""

from __future__ import annotations

from compiler.ir import Node, RegionSum, State, Strategy, Update
from compiler.rules.base import RuleContext


def push_delta_through_region_sum(node: Node, ctx: RuleContext) -> Node | None:
    if not isinstance(node.op, RegionSum):
        return None
    (source,) = ctx.inputs(node)
    if source.state is not State.BOX:
        return None
    return node.with_update(Update(State.FULL, Strategy.DELTA))  # O(V) + s·Σ_box Δ·W
