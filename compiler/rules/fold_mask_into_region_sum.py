"""fold_mask_into_region_sum: ``Σ_{y,x} (A ⊙ W) · s = RegionSum_{W,s}(A)`` for a constant map
``W`` (exact).

Identity: a spatial mean or sum of a map multiplied element-wise by a model constant — a
segmentation region score's ``(p ⊙ mask).mean((2, 3))``, Captum's usual wrapper
``model(x)["out"][:, c].mul(mask).sum((1, 2))`` — is one weighted sum of the map, so the
product never needs its own per-query box: ``push_delta_through_region_sum`` then maintains the
aggregate from the map's box alone. Preconditions: the product feeds only this aggregate; the
constant has the map's spatial size and one channel or the map's channels (the product has the
map's shape); the aggregate has no weights of its own yet.
"""

from __future__ import annotations

from dataclasses import replace

from compiler.ir import Arith, Combine, Constant, GlobalAvgPool, Node, RegionSum
from compiler.rules.base import RuleContext


def fold_mask_into_region_sum(node: Node, ctx: RuleContext) -> Node | None:
    op = node.op
    if isinstance(op, GlobalAvgPool):
        scale, keepdim = None, op.keepdim
    elif isinstance(op, RegionSum) and op.weights is None:
        scale, keepdim = op.scale, op.keepdim
    else:
        return None
    (product,) = ctx.inputs(node)
    if not (isinstance(product.op, Combine) and product.op.arith is Arith.MUL):
        return None
    if ctx.consumers.get(product.name, ()) != (node.name,):
        return None
    sources = ctx.inputs(product)
    masks = [s for s in sources if isinstance(s.op, Constant)]
    maps = [s for s in sources if not isinstance(s.op, Constant)]
    if len(masks) != 1 or len(maps) != 1:
        return None
    (mask,), (source,) = masks, maps
    shape, weights = source.schema.shape, mask.schema.shape
    if not source.schema.is_spatial or len(weights) != 3 or product.schema.shape != shape:
        return None
    if weights[1:] != shape[1:] or weights[0] not in (1, shape[0]):
        return None
    assert isinstance(mask.op, Constant)
    if scale is None:
        scale = 1.0 / (shape[1] * shape[2])  # the mean's 1/HW
    region = RegionSum(mask.op.ref, scale, keepdim)
    return replace(node, op=region, inputs=(source.name,))  # Σ(A ⊙ W)·s → RegionSum_{W,s}(A)
