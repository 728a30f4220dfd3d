"""The torch reference implementation of every ``KernelId``: the CPU (and CUDA) backend and
the oracle for kernel tests.

Each kernel computes one node for a batch of queries: ``kernel(node, inputs, env) -> value``,
where ``inputs`` are the per-query values of the node's inputs (``Patch``, full tensor, or
``None`` for clean) in order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor

from compiler.ir import (
    Arith,
    BatchNorm,
    Combine,
    GlobalAvgPool,
    JoinAggregate,
    Linear,
    Map,
    Node,
    Occlude,
    Pointwise,
    Pool,
    RegionSum,
    Scalar,
    Upsample,
)
from compiler.physical import KernelId
from compiler.types import Agg, Padding, Size, Window
from runtime import aten
from runtime import full as full_ops
from runtime.values import (
    Env,
    Patch,
    Value,
    cells_of,
    gather,
    gather_view,
    operands,
    read_origin,
)

Kernel = Callable[[Node, list[Value], Env], Value]


def _box(node: Node) -> Size:
    assert node.update is not None and node.update.box is not None
    return node.update.box


def _patch(node: Node, values: Tensor, env: Env) -> Patch:
    return Patch(values, *env.batch.origins[node.name])


def _map_size(node: Node) -> Size:
    return node.schema.size


def view(node: Node, inputs: list[Value], env: Env) -> Value:
    return None


def occlude_patch(node: Node, inputs: list[Value], env: Env) -> Value:
    """Patch box cells take the colour (or ``env.fill``'s content) where the (possibly
    clipped) window covers them."""
    assert isinstance(node.op, Occlude)
    (source,) = node.inputs
    box, batch = _box(node), env.batch
    origin = batch.origins[node.name]
    image = gather_view(env.views[source], batch.image, origin, box)
    cells = cells_of(origin, box)
    covered = torch.ones((len(image), *box), dtype=torch.bool, device=image.device)
    for axis, first in zip(cells, batch.starts):
        covered = covered & (axis >= first.reshape(axis.shape[:1] + (1,) * (axis.dim() - 1)))
    if env.fill is not None:
        content = env.fill.cells(image, batch.image, batch.starts, cells, covered, batch.position)
    else:
        colour = torch.tensor(node.op.color, dtype=image.dtype, device=image.device)
        content = colour.reshape(-1, *([1] * box.d)).expand_as(image[0])
    return Patch(torch.where(covered[:, None], content, image), *origin)


def _window(
    node: Node, inputs: list[Value], env: Env, fill: float, *, delta: bool = False
) -> Tensor:
    """The read-in window of a window operator: ``Window(view ⊕ patch)``, or with ``delta``
    the zero-padded difference ``Window(0 ⊕ Δ)``."""
    assert node.update is not None and node.update.read is not None
    (source,) = node.inputs
    patch = inputs[0]
    assert isinstance(patch, Patch)
    read = read_origin(node, env.batch.origins[node.name])
    map_size = Size(*env.views[source].shape[2:])
    if delta:
        change = _difference(source, patch, env)
        return gather(None, change, env.batch.image, read, node.update.read, map_size, 0.0)
    return gather(env.views[source], patch, env.batch.image, read, node.update.read, map_size, fill)


def _difference(source: str, patch: Patch, env: Env) -> Patch:
    """``Δ = patch − view`` over the patch's own box."""
    before = gather_view(env.views[source], env.batch.image, patch.origin, patch.size)
    return Patch(patch.values - before, *patch.origin)


def gather_conv(node: Node, inputs: list[Value], env: Env) -> Value:
    assert isinstance(node.op, JoinAggregate)
    window = _window(node, inputs, env, 0.0)
    return _patch(node, full_ops.conv(window, node.op, env.weights, with_padding=False), env)


def gather_pool(node: Node, inputs: list[Value], env: Env) -> Value:
    assert isinstance(node.op, Pool)
    fill = float("-inf") if node.op.agg is Agg.MAX else 0.0
    window = _window(node, inputs, env, fill)
    if node.op.agg is Agg.MAX or node.op.constant_divisor is not None:
        return _patch(node, full_ops.pool(window, node.op, with_padding=False), env)
    return _patch(node, _sum_pool(window, node.op) / _divisor(node, env), env)


def _sum_pool(window: Tensor, op: Pool) -> Tensor:
    w = op.window
    summed = Pool(Agg.AVG, Window(w.kernel, w.stride, w.dilation, Padding.zero(w.d)), True, 1)
    return full_ops.pool(window, summed, with_padding=False)


def _divisor(node: Node, env: Env) -> Tensor:
    """PyTorch's per-output divisor of an average pool over the box (border windows differ)."""
    origin = env.batch.origins[node.name]
    image = torch.zeros_like(origin[0])
    return gather_view(divisor_map(node, env), image, origin, _box(node))


def divisor_map(node: Node, env: Env) -> Tensor:
    """``[1, 1, *out]``: the divisor of every output of an average pool over the full map."""
    assert isinstance(node.op, Pool)
    divisor = env.cache.get(node.name)
    if divisor is None:
        source = env.views[node.inputs[0]]
        ones = torch.ones(1, 1, *source.shape[2:], dtype=torch.float32, device=source.device)
        counts = full_ops.pool(
            ones, Pool(Agg.AVG, node.op.window, node.op.count_include_pad, 1), with_padding=True
        )
        means = full_ops.pool(ones, node.op, with_padding=True)
        divisor = env.cache[node.name] = torch.round(counts / means).to(source.dtype)
    return divisor


def elementwise(node: Node, inputs: list[Value], env: Env) -> Value:
    (patch,) = inputs
    assert isinstance(patch, Patch) and isinstance(node.op, Map | Scalar | BatchNorm)
    return _patch(node, full_ops.elementwise(node.op, patch.values, env.weights), env)


def pointwise(node: Node, inputs: list[Value], env: Env) -> Value:
    """A per-position call on the patch values (layer norm over channels, a shuffle, …)."""
    (patch,) = inputs
    assert isinstance(patch, Patch) and isinstance(node.op, Pointwise)
    return _patch(node, aten.pointwise(node.op, patch.values, env.weights), env)


def upsample(node: Node, inputs: list[Value], env: Env) -> Value:
    """Nearest (or zero-inserting) upsampling of the patch: the changed blocks, at ``s·y0``."""
    (patch,) = inputs
    assert isinstance(patch, Patch) and isinstance(node.op, Upsample)
    return _patch(node, full_ops.upsample(patch.values, node.op), env)


def gather_upsample(node: Node, inputs: list[Value], env: Env) -> Value:
    """(Bi/tri)linear upsampling of a box: gather the ``b + 2`` input cells along each axis
    it reads from ``view ⊕ patch``, then blend axis by axis with torch's source indices
    (``align_corners=False``)."""
    assert isinstance(node.op, Upsample) and node.update is not None
    (source,) = node.inputs
    (patch,) = inputs
    assert isinstance(patch, Patch) and node.update.read is not None
    box, read, scale = _box(node), node.update.read, node.op.scale
    size = Size(*env.views[source].shape[2:])
    axes = [
        _linear_axis(o, b, s, n, r)
        for o, b, s, n, r in zip(env.batch.origins[node.name], box, scale, size, read)
    ]
    starts = tuple(axis[0] for axis in axes)
    values = gather(env.views[source], patch, env.batch.image, starts, read, size).contiguous()
    for a, axis in enumerate(axes):
        values = _blend(values, axis, 2 + a)
    return _patch(node, values, env)


def _blend(values: Tensor, axis: tuple[Tensor, Tensor, Tensor, Tensor], dim: int) -> Tensor:
    """Linear interpolation along ``dim`` between the cells ``axis`` names per output cell."""
    _, low, high, weight = axis  # [B, L]: local source indices and the weight of ``high``
    shape = [len(low)] + [1] * (values.dim() - 1)
    shape[dim] = low.shape[1]
    extent = list(values.shape)
    extent[dim] = low.shape[1]
    a = values.gather(dim, low.reshape(shape).expand(extent))
    b = values.gather(dim, high.reshape(shape).expand(extent))
    return a + (b - a) * weight.reshape(shape).to(values.dtype)


def _linear_axis(
    origin: Tensor, length: int, scale: int, size: int, read: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For output cells ``origin + [0, length)`` along one axis: the read window's start, and
    per cell the two source cells (relative to it) and the second one's weight."""
    device = origin.device
    cells = origin[:, None] + torch.arange(length, device=device)  # [B, L]
    ratio = torch.tensor(1.0 / scale, dtype=torch.float32, device=device)
    source = (ratio * (cells.to(torch.float32) + 0.5) - 0.5).clamp(min=0.0)
    low = source.floor().to(torch.long)
    high = torch.clamp(low + 1, max=size - 1)
    weight = source - low.to(torch.float32)
    start = torch.clamp(low[:, 0], 0, size - read)
    return start, low - start[:, None], high - start[:, None], weight


def shift(node: Node, inputs: list[Value], env: Env) -> Value:
    (patch,) = inputs
    assert isinstance(patch, Patch)
    return _patch(node, patch.values, env)


def _gathered(node: Node, inputs: list[Value], env: Env) -> list[Tensor]:
    """Every operand over the node's bounding box, from ``view ⊕ patch`` (or the view)."""
    origin = env.batch.origins[node.name]
    box, map_size, image = _box(node), _map_size(node), env.batch.image
    return [
        gather(source, patch, image, origin, box, map_size)
        for source, patch in operands(node, inputs, env)
    ]


def gather_combine(node: Node, inputs: list[Value], env: Env) -> Value:
    assert isinstance(node.op, Combine)
    a, b = _gathered(node, inputs, env)
    return _patch(node, full_ops.ARITH[node.op.arith](a, b), env)


def gather_concat(node: Node, inputs: list[Value], env: Env) -> Value:
    return _patch(node, torch.cat(_gathered(node, inputs, env), dim=1), env)


def project(node: Node, inputs: list[Value], env: Env) -> Value:
    """``view ⊕ patch`` as a full tensor per query."""
    (patch,) = inputs
    assert isinstance(patch, Patch)
    (source,) = node.inputs
    result = env.views[source][env.batch.image].clone()
    d, device = patch.size.d, result.device
    cells: list[Tensor] = []
    for a, (start, length) in enumerate(zip(patch.origin, patch.size)):
        shape = [len(start)] + [1] * d
        shape[1 + a] = length
        cells.append((start[:, None] + torch.arange(length, device=device)).reshape(shape))
    batch = torch.arange(len(result), device=device).reshape([-1] + [1] * d)
    # advanced indices apart (around the channel slice) put their axes first: [B, *box, C]
    index: tuple[Tensor | slice, ...] = (batch, slice(None), *cells)
    result[index] = patch.values.permute(0, *range(2, d + 2), 1)
    return result


def full(node: Node, inputs: list[Value], env: Env) -> Value:
    """The operator on full per-query tensors; clean inputs read their views per query."""
    tensors = []
    for name, value in zip(node.inputs, inputs):
        assert not isinstance(value, Patch), f"{node.name} reads a boxed input"
        tensors.append(env.views[name][env.batch.image] if value is None else value)
    return full_ops.full(node, tensors, env.weights)


# -- the linear delta form: view_out + L(Δ) ---------------------------------------------------


def _view_out(node: Node, env: Env) -> Tensor:
    return gather_view(env.views[node.name], env.batch.image, env.batch.origins[node.name],
                       _box(node))  # fmt: skip


def delta_conv(node: Node, inputs: list[Value], env: Env) -> Value:
    assert isinstance(node.op, JoinAggregate)
    window = _window(node, inputs, env, 0.0, delta=True)
    change = full_ops.conv(window, node.op, env.weights, with_padding=False, bias=False)
    return _patch(node, _view_out(node, env) + change, env)


def delta_pool(node: Node, inputs: list[Value], env: Env) -> Value:
    assert isinstance(node.op, Pool) and node.op.agg is Agg.AVG
    window = _window(node, inputs, env, 0.0, delta=True)
    if node.op.constant_divisor is not None:
        change = full_ops.pool(window, node.op, with_padding=False)
    else:
        change = _sum_pool(window, node.op) / _divisor(node, env)
    return _patch(node, _view_out(node, env) + change, env)


def delta_elementwise(node: Node, inputs: list[Value], env: Env) -> Value:
    """Batch norm is ``scale·x + shift``; its delta is ``scale·Δ``."""
    assert isinstance(node.op, BatchNorm)
    (patch,) = inputs
    assert isinstance(patch, Patch)
    op, w = node.op, env.weights
    scale = torch.rsqrt(w[op.var] + op.eps)
    if op.weight is not None:
        scale = scale * w[op.weight]
    shape = (-1, *([1] * patch.size.d))
    change = _difference(node.inputs[0], patch, env).values * scale.reshape(shape)
    return _patch(node, _view_out(node, env) + change, env)


def delta_combine(node: Node, inputs: list[Value], env: Env) -> Value:
    assert isinstance(node.op, Combine)
    origin = env.batch.origins[node.name]
    box, result = _box(node), _view_out(node, env)
    for index, (name, value) in enumerate(zip(node.inputs, inputs)):
        if isinstance(value, Patch):
            change = gather(
                None, _difference(name, value, env), env.batch.image, origin, box, _map_size(node)
            )
            negative = index == 1 and node.op.arith is Arith.SUB
            result = result - change if negative else result + change
    return _patch(node, result, env)


def delta_global_pool(node: Node, inputs: list[Value], env: Env) -> Value:
    """``avg(V ⊕ Δ) = avg(V) + ΣΔ/HW``."""
    assert isinstance(node.op, GlobalAvgPool)
    (patch,) = inputs
    assert isinstance(patch, Patch)
    (source,) = node.inputs
    cells = Size(*env.views[source].shape[2:])
    spatial_dims = tuple(range(2, 2 + cells.d))
    change = _difference(source, patch, env).values.sum(dim=spatial_dims) / cells.area
    pooled = env.views[node.name][env.batch.image]
    return pooled + change.reshape(pooled.shape)


def delta_region_sum(node: Node, inputs: list[Value], env: Env) -> Value:
    """``O(V ⊕ Δ) = O(V) + s · Σ_box Δ ⊙ W|box`` (the weights over each query's box)."""
    op = node.op
    assert isinstance(op, RegionSum)
    (patch,) = inputs
    assert isinstance(patch, Patch)
    (source,) = node.inputs
    cells = Size(*env.views[source].shape[2:])
    change = _difference(source, patch, env)
    values = change.values
    if op.weights is not None:
        region = full_ops.region_weights(op, env.weights, cells).to(values.dtype)
        at = torch.zeros_like(change.origin[0])
        values = values * gather_view(region[None], at, change.origin, change.size)
    pooled = env.views[node.name][env.batch.image]
    spatial_dims = tuple(range(2, 2 + cells.d))
    return pooled + (values.sum(dim=spatial_dims) * op.scale).reshape(pooled.shape)


def delta_linear(node: Node, inputs: list[Value], env: Env) -> Value:
    """``L(flatten(V ⊕ Δ)) = L(flatten(V)) + W|box · Δ``: a dense head over its input box's
    columns only. Queries whose boxes share an origin are multiplied together; the weight is
    read cell-major (``Weights.cell_major``), so each run of the box along its last axis is
    one contiguous block of it: no copy of the weight per query."""
    op = node.op
    assert isinstance(op, Linear)
    (patch,) = inputs
    assert isinstance(patch, Patch)
    (source,) = node.inputs
    change = _difference(source, patch, env)
    values, box = change.values, tuple(change.values.shape[2:])
    cells = tuple(env.views[source].shape[2:])
    table = env.weights.cell_major(op.weight, values.shape[1], cells).to(values.dtype)
    rows = values.permute(0, *range(2, values.dim()), 1)  # [B, *box, C]: cells, then channels
    result = env.views[node.name][env.batch.image].clone()
    origins = torch.stack(change.origin, dim=1)
    unique, inverse = torch.unique(origins, dim=0, return_inverse=True)
    for group, origin in enumerate(unique.tolist()):
        members = (inverse == group).nonzero().squeeze(1)
        part = rows[members]
        change_out = result.new_zeros(len(members), table.shape[-1])
        for lead in itertools.product(*(range(n) for n in box[:-1])):
            at: tuple[int, ...] = tuple(o + i for o, i in zip(origin, lead))
            columns = table[at][origin[-1] : origin[-1] + box[-1]].reshape(-1, table.shape[-1])
            index: tuple[slice | int, ...] = (slice(None), *lead)
            change_out.addmm_(part[index].reshape(len(members), -1), columns)
        result[members] += change_out
    return result


KERNELS: dict[KernelId, Kernel] = {
    KernelId.VIEW: view,
    KernelId.OCCLUDE: occlude_patch,
    KernelId.GATHER_CONV: gather_conv,
    KernelId.GATHER_POOL: gather_pool,
    KernelId.ELEMENTWISE: elementwise,
    KernelId.POINTWISE: pointwise,
    KernelId.UPSAMPLE: upsample,
    KernelId.GATHER_UPSAMPLE: gather_upsample,
    KernelId.SHIFT: shift,
    KernelId.GATHER_COMBINE: gather_combine,
    KernelId.GATHER_CONCAT: gather_concat,
    KernelId.DELTA_CONV: delta_conv,
    KernelId.DELTA_POOL: delta_pool,
    KernelId.DELTA_ELEMENTWISE: delta_elementwise,
    KernelId.DELTA_COMBINE: delta_combine,
    KernelId.DELTA_GLOBAL_POOL: delta_global_pool,
    KernelId.DELTA_REGION_SUM: delta_region_sum,
    KernelId.DELTA_LINEAR: delta_linear,
    KernelId.PROJECT: project,
    KernelId.FULL: full,
}
