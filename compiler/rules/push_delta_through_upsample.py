"""push_delta_through_upsample: ``up(V ⊕ ΔA) = V_up ⊕ up(ΔA)`` for nearest upsampling (exact).

Identity: nearest upsampling by integer factors ``s`` copies each input cell into an ``s×s``
block and reads nothing else, so the changed output cells are exactly the blocks of the changed
input cells: a box of ``b`` cells at ``y0`` becomes ``s·b`` cells at ``s·y0`` (never past the
border: ``y0 + b <= H`` gives ``s·y0 + s·b <= s·H``), computed from the patch alone.
Precondition: the input is boxed.
"""

from __future__ import annotations

from compiler.ir import Node, State, Strategy, Update, Upsample
from compiler.rules.base import RuleContext
from compiler.types import Size2


def push_delta_through_upsample(node: Node, ctx: RuleContext) -> Node | None:
    if not isinstance(node.op, Upsample):
        return None
    (source,) = ctx.inputs(node)
    if source.state is not State.BOX:
        return None
    assert source.update is not None and source.update.box is not None
    box, scale = source.update.box, node.op.scale
    out = Size2(box.h * scale.h, box.w * scale.w)
    return node.with_update(Update(State.BOX, Strategy.ELEMENTWISE, out))  # up(Δ)
