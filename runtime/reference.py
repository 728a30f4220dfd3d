"""The torch reference implementation of every ``KernelId``: the CPU (and CUDA) backend and
the oracle for kernel tests.

Each kernel computes one node for a batch of queries: ``kernel(node, inputs, env) -> value``,
where ``inputs`` are the per-query values of the node's inputs (``Patch``, full tensor, or
``None`` for clean) in order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from compiler.ir import (
    Arith,
    BatchNorm,
    Combine,
    GlobalAvgPool,
    JoinAggregate,
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
from compiler.types import Agg, Size2
from runtime import aten
from runtime import full as full_ops
from runtime.values import Env, Patch, Value, gather, gather_view, operands, read_origin

Kernel = Callable[[Node, list[Value], Env], Value]


def _box(node: Node) -> Size2:
    assert node.update is not None and node.update.box is not None
    return node.update.box


def _patch(node: Node, values: Tensor, env: Env) -> Patch:
    y0, x0 = env.batch.origins[node.name]
    return Patch(values, y0, x0)


def _map_size(node: Node) -> Size2:
    return node.schema.size


def view(node: Node, inputs: list[Value], env: Env) -> Value:
    return None


def occlude_patch(node: Node, inputs: list[Value], env: Env) -> Value:
    """Patch box cells take the colour where the (possibly clipped) window covers them."""
    assert isinstance(node.op, Occlude)
    (source,) = node.inputs
    box, batch = _box(node), env.batch
    y0, x0 = batch.origins[node.name]
    image = gather_view(env.views[source], batch.image, y0, x0, box)
    device = image.device
    rows = (y0[:, None] + torch.arange(box.h, device=device)) >= batch.top[:, None]
    cols = (x0[:, None] + torch.arange(box.w, device=device)) >= batch.left[:, None]
    color = torch.tensor(node.op.color, dtype=image.dtype, device=device)[:, None, None]
    covered = (rows[:, :, None] & cols[:, None, :])[:, None]
    return Patch(torch.where(covered, color.expand_as(image[0]), image), y0, x0)


def _window(
    node: Node, inputs: list[Value], env: Env, fill: float, *, delta: bool = False
) -> Tensor:
    """The read-in window of a window operator: ``Window(view ⊕ patch)``, or with ``delta``
    the zero-padded difference ``Window(0 ⊕ Δ)``."""
    assert node.update is not None and node.update.read is not None
    (source,) = node.inputs
    patch = inputs[0]
    assert isinstance(patch, Patch)
    ry, rx = read_origin(node, env.batch.origins[node.name])
    map_size = Size2(*env.views[source].shape[2:])
    if delta:
        return gather(
            None,
            _difference(source, patch, env),
            env.batch.image,
            ry,
            rx,
            node.update.read,
            map_size,
            0.0,
        )
    return gather(
        env.views[source], patch, env.batch.image, ry, rx, node.update.read, map_size, fill
    )


def _difference(source: str, patch: Patch, env: Env) -> Patch:
    """``Δ = patch − view`` over the patch's own box."""
    size = Size2(*patch.values.shape[2:])
    before = gather_view(env.views[source], env.batch.image, patch.y0, patch.x0, size)
    return Patch(patch.values - before, patch.y0, patch.x0)


def gather_conv2d(node: Node, inputs: list[Value], env: Env) -> Value:
    assert isinstance(node.op, JoinAggregate)
    window = _window(node, inputs, env, 0.0)
    return _patch(node, full_ops.conv2d(window, node.op, env.weights, with_padding=False), env)


def gather_pool2d(node: Node, inputs: list[Value], env: Env) -> Value:
    assert isinstance(node.op, Pool)
    fill = float("-inf") if node.op.agg is Agg.MAX else 0.0
    window = _window(node, inputs, env, fill)
    if node.op.agg is Agg.MAX or node.op.constant_divisor is not None:
        return _patch(node, full_ops.pool2d(window, node.op, with_padding=False), env)
    return _patch(node, _sum_pool(window, node.op) / _divisor(node, env), env)


def _sum_pool(window: Tensor, op: Pool) -> Tensor:
    w = op.window
    return F.avg_pool2d(
        window, (w.kernel.h, w.kernel.w), (w.stride.h, w.stride.w), divisor_override=1
    )


def _divisor(node: Node, env: Env) -> Tensor:
    """PyTorch's per-output divisor of an average pool over the box (border windows differ)."""
    y0, x0 = env.batch.origins[node.name]
    image = torch.zeros_like(y0)
    return gather_view(divisor_map(node, env), image, y0, x0, _box(node))


def divisor_map(node: Node, env: Env) -> Tensor:
    """``[1, 1, OH, OW]``: the divisor of every output of an average pool over the full map."""
    assert isinstance(node.op, Pool)
    divisor = env.cache.get(node.name)
    if divisor is None:
        source = env.views[node.inputs[0]]
        ones = torch.ones(1, 1, *source.shape[2:], dtype=torch.float32, device=source.device)
        counts = full_ops.pool2d(
            ones, Pool(Agg.AVG, node.op.window, node.op.count_include_pad, 1), with_padding=True
        )
        means = full_ops.pool2d(ones, node.op, with_padding=True)
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
    """Bilinear upsampling of a box: gather the ``b + 2`` input rows (and columns) it reads
    from ``view ⊕ patch``, then blend with torch's source indices (``align_corners=False``)."""
    assert isinstance(node.op, Upsample) and node.update is not None
    (source,) = node.inputs
    (patch,) = inputs
    assert isinstance(patch, Patch) and node.update.read is not None
    oy, ox = env.batch.origins[node.name]
    box, read = _box(node), node.update.read
    size = Size2(*env.views[source].shape[2:])
    rows = _bilinear_axis(oy, box.h, node.op.scale.h, size.h, read.h)
    cols = _bilinear_axis(ox, box.w, node.op.scale.w, size.w, read.w)
    window = gather(env.views[source], patch, env.batch.image, rows[0], cols[0], read, size)
    return _patch(node, _blend(_blend(window.contiguous(), rows, 2), cols, 3), env)


def _blend(values: Tensor, axis: tuple[Tensor, Tensor, Tensor, Tensor], dim: int) -> Tensor:
    """Linear interpolation along ``dim`` between the cells ``axis`` names per output cell."""
    _, low, high, weight = axis  # [B, L]: local source indices and the weight of ``high``
    shape = [len(low), 1, 1, 1]
    shape[dim] = low.shape[1]
    extent = list(values.shape)
    extent[dim] = low.shape[1]
    a = values.gather(dim, low.reshape(shape).expand(extent))
    b = values.gather(dim, high.reshape(shape).expand(extent))
    return a + (b - a) * weight.reshape(shape).to(values.dtype)


def _bilinear_axis(
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
    y0, x0 = env.batch.origins[node.name]
    box, map_size, image = _box(node), _map_size(node), env.batch.image
    return [
        gather(source, patch, image, y0, x0, box, map_size)
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
    h, w = patch.values.shape[2:]
    device = result.device
    rows = (patch.y0[:, None] + torch.arange(h, device=device))[:, :, None]
    cols = (patch.x0[:, None] + torch.arange(w, device=device))[:, None, :]
    batch = torch.arange(len(rows), device=device)[:, None, None]
    result[batch, :, rows, cols] = patch.values.permute(0, 2, 3, 1)
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
    y0, x0 = env.batch.origins[node.name]
    return gather_view(env.views[node.name], env.batch.image, y0, x0, _box(node))


def delta_conv2d(node: Node, inputs: list[Value], env: Env) -> Value:
    assert isinstance(node.op, JoinAggregate)
    window = _window(node, inputs, env, 0.0, delta=True)
    change = full_ops.conv2d(window, node.op, env.weights, with_padding=False, bias=False)
    return _patch(node, _view_out(node, env) + change, env)


def delta_pool2d(node: Node, inputs: list[Value], env: Env) -> Value:
    assert isinstance(node.op, Pool) and node.op.agg is Agg.AVG
    window = _window(node, inputs, env, 0.0, delta=True)
    if node.op.constant_divisor is not None:
        change = full_ops.pool2d(window, node.op, with_padding=False)
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
    change = _difference(node.inputs[0], patch, env).values * scale[:, None, None]
    return _patch(node, _view_out(node, env) + change, env)


def delta_combine(node: Node, inputs: list[Value], env: Env) -> Value:
    assert isinstance(node.op, Combine)
    y0, x0 = env.batch.origins[node.name]
    box, result = _box(node), _view_out(node, env)
    for index, (name, value) in enumerate(zip(node.inputs, inputs)):
        if isinstance(value, Patch):
            change = gather(
                None, _difference(name, value, env), env.batch.image, y0, x0, box, _map_size(node)
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
    height, width = env.views[source].shape[2:]
    change = _difference(source, patch, env).values.sum(dim=(2, 3)) / (height * width)
    pooled = env.views[node.name][env.batch.image]
    return pooled + change.reshape(pooled.shape)


def delta_region_sum(node: Node, inputs: list[Value], env: Env) -> Value:
    """``O(V ⊕ Δ) = O(V) + s · Σ_box Δ ⊙ W|box`` (the weights over each query's box)."""
    op = node.op
    assert isinstance(op, RegionSum)
    (patch,) = inputs
    assert isinstance(patch, Patch)
    (source,) = node.inputs
    height, width = env.views[source].shape[2:]
    change = _difference(source, patch, env)
    values = change.values
    if op.weights is not None:
        region = full_ops.region_weights(op, env.weights, height, width).to(values.dtype)
        at = torch.zeros_like(change.y0)
        size = Size2(*values.shape[2:])
        values = values * gather_view(region[None], at, change.y0, change.x0, size)
    pooled = env.views[node.name][env.batch.image]
    return pooled + (values.sum(dim=(2, 3)) * op.scale).reshape(pooled.shape)


KERNELS: dict[KernelId, Kernel] = {
    KernelId.VIEW: view,
    KernelId.OCCLUDE: occlude_patch,
    KernelId.GATHER_CONV2D: gather_conv2d,
    KernelId.GATHER_POOL2D: gather_pool2d,
    KernelId.ELEMENTWISE: elementwise,
    KernelId.POINTWISE: pointwise,
    KernelId.UPSAMPLE: upsample,
    KernelId.GATHER_UPSAMPLE: gather_upsample,
    KernelId.SHIFT: shift,
    KernelId.GATHER_COMBINE: gather_combine,
    KernelId.GATHER_CONCAT: gather_concat,
    KernelId.DELTA_CONV2D: delta_conv2d,
    KernelId.DELTA_POOL2D: delta_pool2d,
    KernelId.DELTA_ELEMENTWISE: delta_elementwise,
    KernelId.DELTA_COMBINE: delta_combine,
    KernelId.DELTA_GLOBAL_POOL: delta_global_pool,
    KernelId.DELTA_REGION_SUM: delta_region_sum,
    KernelId.PROJECT: project,
    KernelId.FULL: full,
}
