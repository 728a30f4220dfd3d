"""push_delta_through_dense_head: ``L(flatten(V ⊕ ΔA)) = L(flatten(V)) + W|box · flatten(ΔA)``
for a fully-connected layer ``L`` on a flattened map (exact).

Identity: ``L(x) = W·x + b`` is linear, and the flattened occluded map differs from the
flattened view only in the columns of the update box's cells, so the layer's output is the
view's output plus the box's columns of ``W`` times the difference ``Δ = patch − view`` there
— the textbook IVM delta of a join with a static table, over the box's columns only. It
replaces projecting the box into a full per-query map, flattening it and multiplying every
column (VGG-style dense heads: ``Linear(flatten(map))``).

Chosen by cost: the delta multiplies ``|box|/|map|`` of the columns, but in one small product
per box origin (queries sharing an origin share it), where the full layer is one large
product per batch that reads the weight once. Per column, the delta's multiply-adds cost about
``DELTA_FMA_COST`` of the full product's, and each read of a column's weights for one origin
about ``WEIGHT_READ_FMA`` multiply-adds, so the rule fires when
``|box| · (DELTA_FMA_COST + WEIGHT_READ_FMA · origins/queries) < |map|``. Both constants are
fitted on the 2-core CPU (``benchmarks/dense_head.py``: a 1,024-wide head on a 64 × 16 × 16
map, box 7 × 7, 100 origins: 841 queries ran 1.5× slower by the delta, 3,249 queries 1.17×
faster), so the delta form pays on dense grids over maps much larger than their boxes; at
224 px VGG16's box after the last pool is the whole 7 × 7 map and its head stays full.
Preconditions: the layer reads a ``Flatten`` of a projected boxed map, and the flatten and the
projection feed nothing else.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Flatten, Linear, Node, Project, State, Strategy, Update
from compiler.options import LinearStrategy
from compiler.rules.base import RuleContext

DELTA_FMA_COST = 2.7
WEIGHT_READ_FMA = 66.0


def push_delta_through_dense_head(node: Node, ctx: RuleContext) -> Node | None:
    if not isinstance(node.op, Linear) or node.update is None:
        return None
    if node.update.strategy is not Strategy.FULL:
        return None
    (flat,) = ctx.inputs(node)
    if not isinstance(flat.op, Flatten) or ctx.consumers.get(flat.name) != (node.name,):
        return None
    (projected,) = ctx.inputs(flat)
    if not isinstance(projected.op, Project) or ctx.consumers.get(projected.name) != (flat.name,):
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
    cost = source.update.box.area * (DELTA_FMA_COST + WEIGHT_READ_FMA * shared)
    if cost < source.schema.size.area:
        return delta  # cheaper here
    return None
