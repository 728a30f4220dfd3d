"""keep_clean_views: ``Q(A) = V_Q`` when no input of ``Q`` is updated (exact).

Identity: an operator whose inputs are all unchanged by the occlusion produces its materialized
view; every query reads the view. Precondition: no input is boxed or full; the query's own
update (``Occlude``) is never clean.
"""

from __future__ import annotations

from compiler.ir import Node, Occlude, State, Strategy, Update
from compiler.rules.base import RuleContext


def keep_clean_views(node: Node, ctx: RuleContext) -> Node | None:
    if isinstance(node.op, Occlude):
        return None
    if all(source.state is State.CLEAN for source in ctx.inputs(node)):
        return node.with_update(Update(State.CLEAN, Strategy.VIEW))  # Q(A) → V_Q
    return None
