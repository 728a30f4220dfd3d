"""push_delta_through_upsample: ``up(V ⊕ ΔA) = V_up ⊕ up(ΔA)`` (nearest) and
``up(V ⊕ ΔA) = V_up ⊕ up(Window(V ⊕ ΔA))`` (bilinear), for integer factors ``s`` (exact).

Identity: nearest upsampling copies each input cell into an ``s×s`` block and reads nothing
else, so the changed output cells are exactly the blocks of the changed input cells: a box of
``b`` cells at ``y0`` becomes ``s·b`` cells at ``s·y0`` (never past the border), computed from
the patch alone. Bilinear upsampling (``align_corners=False``) blends input rows ``i0(y)`` and
``i0(y) + 1`` with ``i0(y) = ⌊max((y + ½)/s − ½, 0)⌋``; the rows whose ``i0`` lies in
``[y0 − 1, y0 + b − 1]`` run from ``s·y0 − ⌊(s + 1)/2⌋`` to ``s·(y0 + b) + ⌈(s − 1)/2⌉``:
``s·(b + 1)`` rows (clamped inward at the border), recomputed from ``b + 2`` input rows of
``view ⊕ patch``. Zero insertion (a transposed convolution's first half) writes each input
cell at the first cell of its block and zeros elsewhere: nearest's boxes, from the patch alone.
Precondition: the input is boxed.
"""

from __future__ import annotations

from compiler.ir import Node, State, Strategy, Update, Upsample
from compiler.rules.base import RuleContext


def push_delta_through_upsample(node: Node, ctx: RuleContext) -> Node | None:
    if not isinstance(node.op, Upsample):
        return None
    (source,) = ctx.inputs(node)
    if source.state is not State.BOX:
        return None
    assert source.update is not None and source.update.box is not None
    box, scale = source.update.box, node.op.scale
    if node.op.mode.copies_blocks:
        out = box.map(lambda b, s: b * s, scale)
        return node.with_update(Update(State.BOX, Strategy.ELEMENTWISE, out))  # up(Δ)
    size, inner = node.schema.size, source.schema.size
    out = box.map(lambda b, s, n: min(s * (b + 1), n), scale, size)
    read = box.map(lambda b, n: min(b + 2, n), inner)
    return node.with_update(Update(State.BOX, Strategy.RECOMPUTE, out, read))  # up(W(V ⊕ Δ))
