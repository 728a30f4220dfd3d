"""push_delta_through_join: ``Γ(A ⊕ ΔA ⋈ K) = Γ(Window(V_A ⊕ ΔA) ⋈ K)`` on the box (exact).

Identity (research §2.3): a convolution or pooling group-by changes only for the groups whose
window meets the input box; recomputing exactly those groups from the read-in window of
``view ⊕ patch`` (out-of-range cells are padding) gives the new values. The box size is the
widest over the queries of the outputs whose window meets the query's input box, clipped to
the map (``boxes.fitted_box``): at most the uniform bound ``min(ceil((W + K − 1)/S), W_O)``
(which ``CompileOptions.fit_boxes=False`` keeps), less when every query's box meets a border
or the queries' alignment with the stride leaves that bound's last cell unused.
Preconditions: the input is boxed. Recompute is the default for every window operator; the
linear ones may switch to the delta form in the cost stage.
"""

from __future__ import annotations

from compiler import boxes
from compiler.ir import JoinAggregate, Node, Pool, State, Strategy, Update
from compiler.rules.base import RuleContext


def push_delta_through_join(node: Node, ctx: RuleContext) -> Node | None:
    if not isinstance(node.op, (JoinAggregate, Pool)):
        return None
    (source,) = ctx.inputs(node)
    if source.state is not State.BOX:
        return None
    assert source.update is not None and source.update.box is not None
    box = boxes.output_box(source.update.box, node.op.window, node.schema.size)
    if ctx.options.fit_boxes:  # the widest of the queries' changed outputs, in the map
        box = boxes.fitted_box(
            ctx.origins(source.name), source.update.box, node.op.window, node.schema.size
        )
    read = boxes.read_size(box, node.op.window)
    return node.with_update(Update(State.BOX, Strategy.RECOMPUTE, box, read))  # Γ(W(V⊕Δ)⋈K)
