"""push_delta_through_map: ``f(V ⊕ ΔA) = V_f ⊕ f(ΔA)`` for element-wise ``f`` (exact).

Identity: an element-wise map (activation, batch norm in inference, scalar arithmetic,
dropout) changes exactly the cells its input changes, so it runs on the patch alone and keeps
the box. Constant padding shifts coordinates only: the box moves by (top, left).
Precondition: the input is boxed.
"""

from __future__ import annotations

from compiler.ir import ELEMENTWISE, Node, Pad, State, Strategy, Update
from compiler.rules.base import RuleContext


def push_delta_through_map(node: Node, ctx: RuleContext) -> Node | None:
    if not isinstance(node.op, (*ELEMENTWISE, Pad)):
        return None
    (source,) = ctx.inputs(node)
    if source.state is not State.BOX or source.schema.shape[0] != node.schema.shape[0]:
        return None
    assert source.update is not None
    return node.with_update(Update(State.BOX, Strategy.ELEMENTWISE, source.update.box))  # f(Δ)
