"""push_delta_through_map: ``f(V ⊕ ΔA) = V_f ⊕ f(ΔA)`` for element-wise ``f`` (exact).

Identity: an element-wise map (activation, batch norm in inference, scalar arithmetic) changes
exactly the cells its input changes, so it runs on the patch alone and keeps the box. So does a
per-position operator on channels (``Pointwise``: layer norm over channels, a channels-last
linear layer, a channel shuffle or slice), whose channel count may change. Constant padding
shifts coordinates only: the box moves by (top, left).
Precondition: the input is boxed.
"""

from __future__ import annotations

from compiler.ir import ELEMENTWISE, Node, Pad, Pointwise, State, Strategy, Update
from compiler.rules.base import RuleContext


def push_delta_through_map(node: Node, ctx: RuleContext) -> Node | None:
    if not isinstance(node.op, (*ELEMENTWISE, Pad, Pointwise)):
        return None
    (source,) = ctx.inputs(node)
    if source.state is not State.BOX:
        return None
    if not isinstance(node.op, Pointwise) and source.schema.shape[0] != node.schema.shape[0]:
        return None
    assert source.update is not None
    return node.with_update(Update(State.BOX, Strategy.ELEMENTWISE, source.update.box))  # f(Δ)
