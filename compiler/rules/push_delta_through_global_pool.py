"""push_delta_through_global_pool: ``avg(V ⊕ ΔA) = avg(V) + (ΣΔA − ΣV|box)/HW`` (exact).

Identity: global average pooling is linear, so the pooled value of the occluded map is the
pooled view plus the pooled difference, and the difference is zero outside the box. This
replaces projecting the patch into a full per-query map (research §9, item 4).
Precondition: the input is boxed. The output is a full (per-query) vector.
"""

from __future__ import annotations

from compiler.ir import GlobalAvgPool, Node, State, Strategy, Update
from compiler.rules.base import RuleContext


def push_delta_through_global_pool(node: Node, ctx: RuleContext) -> Node | None:
    if not isinstance(node.op, GlobalAvgPool):
        return None
    (source,) = ctx.inputs(node)
    if source.state is not State.BOX:
        return None
    return node.with_update(Update(State.FULL, Strategy.DELTA))  # avg(V) + avg(Δ)
