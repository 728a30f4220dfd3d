"""push_delta_through_dense_head: ``L(flatten(V ⊕ ΔA)) = L(flatten(V)) + W|box · flatten(ΔA)``
for a fully-connected layer ``L`` on a flattened map (exact).

Identity: ``L(x) = W·x + b`` is linear, and the flattened occluded map differs from the
flattened view only in the columns of the update box's cells, so the layer's output is the
view's output plus the box's columns of ``W`` times the difference ``Δ = patch − view`` there
— the textbook IVM delta of a join with a static table, over the box's columns only. It
replaces projecting the box into a full per-query map, flattening it and multiplying every
column (VGG-style dense heads: ``Linear(flatten(map))``).

Chosen by cost: the delta multiplies ``|box|/|map|`` of the columns, but reads them per box
origin where the full layer reads the weight once per batch of queries; a column read from
memory costs about ``WEIGHT_READ_FMA`` multiply-adds (measured on the 2-core CPU: VGG16's
25,088 → 4,096 layer ran at 3.2 GFMA/s for one row, memory-bound, and 26 GFMA/s for 49 rows).
Queries whose boxes share an origin share the read, so the rule fires when
``|box| · (1 + WEIGHT_READ_FMA · origins/queries) < |map|``.
Preconditions: the layer reads a ``Flatten`` of a projected boxed map, and the flatten and the
projection feed nothing else.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Flatten, Linear, Node, Project, State, Strategy, Update
from compiler.options import LinearStrategy
from compiler.rules.base import RuleContext

WEIGHT_READ_FMA = 8


def push_delta_through_dense_head(node: Node, ctx: RuleContext) -> Node | None:
    if not isinstance(node.op, Linear) or node.update is None:
        return None
    if node.update.strategy is not Strategy.FULL:
        return None
    (flat,) = ctx.inputs(node)
    if not isinstance(flat.op, Flatten) or ctx.consumers.get(flat.name) != (node.name,):
        return None
    (projected,) = ctx.inputs(flat)
    if not isinstance(projected.op, Project) and (
        projected.update is None or projected.update.strategy is not Strategy.PROJECT
    ):
        return None
    if ctx.consumers.get(projected.name) != (flat.name,):
        return None
    (source,) = ctx.inputs(projected)
    if source.state is not State.BOX or not source.schema.is_spatial:
        return None
    assert source.update is not None and source.update.box is not None
    delta = Node(node.name, node.op, (source.name,), node.schema, node.source,
                 Update(State.FULL, Strategy.DELTA))  # fmt: skip
    forced = ctx.options.linear_strategy
    if forced is LinearStrategy.DELTA:
        return delta  # L(flatten(V ⊕ Δ)) → L(flatten(V)) + W|box·Δ
    if forced is LinearStrategy.RECOMPUTE:
        return None
    origins = np.stack(ctx.origins(source.name), axis=1)
    shared = len(np.unique(origins, axis=0)) / len(origins)  # origins per query
    if source.update.box.area * (1 + WEIGHT_READ_FMA * shared) < source.schema.size.area:
        return delta  # cheaper here
    return None
