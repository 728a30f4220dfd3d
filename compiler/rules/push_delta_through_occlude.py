"""push_delta_through_occlude: ``A0 ⊕ Occlude(box)`` is a patch of the base relation (exact).

Identity: the occluded image differs from the base relation only inside the patch, so the
update is a box of the patch's size, at the query's position (clipped windows at the border
shift inward so that every query's box has the same size; the cells the shift adds keep their
image values).
"""

from __future__ import annotations

from compiler.ir import Node, Occlude, State, Strategy, Update
from compiler.rules.base import RuleContext


def push_delta_through_occlude(node: Node, ctx: RuleContext) -> Node | None:
    if not isinstance(node.op, Occlude):
        return None
    return node.with_update(Update(State.BOX, Strategy.OCCLUDE, node.op.patch))  # ΔA0 = patch
