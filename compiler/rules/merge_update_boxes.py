"""merge_update_boxes: ``(V_a ⊕ Δa) ∘ (V_b ⊕ Δb)`` over the bounding box of Δa and Δb (exact).

Identity: a residual add (or any element-wise combination) or a channel concat changes only
inside the union of its inputs' boxes; its bounding box — the true one, per query, then the
largest over all queries so that the size is uniform, shifted inward at the border — is
recomputed from each operand's ``view ⊕ patch``. The paper's static analysis used the first
(add) or last (concat) input's box instead, which under-counts Inception (research §2.6).
Preconditions: no input is full; boxed operands have the output's spatial shape (a broadcast
operand must be clean). Otherwise the node becomes a full computation.
"""

from __future__ import annotations

from compiler import boxes
from compiler.ir import Combine, Concat, Node, State, Strategy, Update
from compiler.rules.base import RuleContext, RuleResult, full_update_with_projections
from compiler.types import Size


def merge_update_boxes(node: Node, ctx: RuleContext) -> RuleResult:
    if not isinstance(node.op, (Combine, Concat)):
        return None
    sources = ctx.inputs(node)
    if any(s.state is State.FULL for s in sources):
        return None
    boxed = [s for s in sources if s.state is State.BOX]
    if not boxed:
        return None
    if not node.schema.is_spatial or any(_broadcasts(s, node) for s in boxed):
        return full_update_with_projections(node, ctx)  # an updated operand is broadcast
    size = node.schema.size
    origins = [ctx.origins(s.name) for s in boxed]
    sizes = [s.update.box for s in boxed if s.update and s.update.box]
    box = Size(*(
        boxes.bounding_size([o[a] for o in origins], [b[a] for b in sizes], size[a])
        for a in range(size.d)
    ))  # fmt: skip
    return node.with_update(Update(State.BOX, Strategy.BOUNDING_BOX, box))  # bbox(Δa, Δb)


def _broadcasts(source: Node, node: Node) -> bool:
    if isinstance(node.op, Concat):
        return source.schema.size != node.schema.size
    return source.schema != node.schema
