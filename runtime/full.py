"""Operators on full tensors with a leading batch axis: materialization of the views and the
full per-query computations after an update has become global."""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from compiler.ir import (
    Activation,
    AdaptivePool,
    Arith,
    Aten,
    BatchNorm,
    Combine,
    Concat,
    Flatten,
    GlobalAvgPool,
    Input,
    JoinAggregate,
    Linear,
    Map,
    Node,
    Occlude,
    Pad,
    Pointwise,
    Pool,
    Project,
    RegionSum,
    Scalar,
    Softmax,
    Upsample,
    UpsampleMode,
)
from compiler.types import Agg, Size
from runtime import aten
from runtime.weights import Weights

ARITH: dict[Arith, Callable[[Tensor, Tensor | float], Tensor]] = {
    Arith.ADD: operator.add,
    Arith.SUB: operator.sub,
    Arith.RSUB: lambda a, b: b - a,
    Arith.MUL: operator.mul,
    Arith.DIV: operator.truediv,
    Arith.RDIV: lambda a, b: b / a,
}

ACTIVATIONS: dict[Activation, Callable[[Tensor, Map], Tensor]] = {
    Activation.IDENTITY: lambda x, m: x,
    Activation.RELU: lambda x, m: F.relu(x),
    Activation.RELU6: lambda x, m: F.relu6(x),
    Activation.HARDTANH: lambda x, m: F.hardtanh(x, m.alpha, m.beta),
    Activation.LEAKY_RELU: lambda x, m: F.leaky_relu(x, m.alpha),
    Activation.SILU: lambda x, m: F.silu(x),
    Activation.HARDSWISH: lambda x, m: F.hardswish(x),
    Activation.HARDSIGMOID: lambda x, m: F.hardsigmoid(x),
    Activation.SIGMOID: lambda x, m: torch.sigmoid(x),
    Activation.TANH: lambda x, m: torch.tanh(x),
    Activation.GELU: lambda x, m: F.gelu(x),
}


def full(node: Node, inputs: list[Tensor], weights: Weights) -> Tensor:
    """``node``'s operator on full tensors with a leading batch axis."""
    op = node.op
    if isinstance(op, JoinAggregate):
        return conv(inputs[0], op, weights, with_padding=True)
    if isinstance(op, Pool):
        return pool(inputs[0], op, with_padding=True)
    if isinstance(op, (Map, Scalar, BatchNorm)):
        return elementwise(op, inputs[0], weights)
    if isinstance(op, Pad):
        return F.pad(inputs[0], op.padding.torch(), value=op.value)
    if isinstance(op, Combine):
        return ARITH[op.arith](inputs[0], inputs[1])
    if isinstance(op, Concat):
        return torch.cat(inputs, dim=1)
    if isinstance(op, Pointwise):
        return aten.pointwise(op, inputs[0], weights)
    if isinstance(op, Upsample):
        return upsample(inputs[0], op)
    return _global(node, inputs, weights)


def region_sum(x: Tensor, op: RegionSum, weights: Weights) -> Tensor:
    """``scale · Σ_cells A ⊙ W`` of ``[N, C, *spatial]`` maps: ``[N, C]`` (``[N, C, 1, …]``
    with keepdim)."""
    cells = Size(*x.shape[2:])
    if op.weights is not None:
        x = x * region_weights(op, weights, cells).to(x.dtype)
    return x.sum(dim=tuple(range(2, 2 + cells.d)), keepdim=op.keepdim) * op.scale


def region_weights(op: RegionSum, weights: Weights, cells: Size) -> Tensor:
    """A region aggregate's weights as ``[1 or C, *spatial]``."""
    assert op.weights is not None
    return weights[op.weights].reshape(-1, *cells)


def _global(node: Node, inputs: list[Tensor], weights: Weights) -> Tensor:
    op, x = node.op, inputs[0]
    if isinstance(op, GlobalAvgPool):
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=op.keepdim)
    if isinstance(op, RegionSum):
        return region_sum(x, op, weights).reshape(len(x), *node.schema.shape)
    if isinstance(op, AdaptivePool):
        name = "avg" if op.agg is Agg.AVG else "max"
        adaptive = getattr(F, f"adaptive_{name}_pool{op.output.d}d")
        result: Tensor = adaptive(x, op.output.dims)
        return result
    if isinstance(op, Flatten):
        return x.reshape(len(x), -1)  # also one value per image → [N, 1]
    if isinstance(op, Linear):  # a map input is read flattened
        flat = x if x.dim() <= 2 else x.reshape(len(x), -1)
        return F.linear(flat, weights[op.weight], weights.get(op.bias))
    if isinstance(op, Softmax):
        return F.log_softmax(x, dim=1) if op.log else F.softmax(x, dim=1)
    if isinstance(op, Aten):
        return aten.fallback(op, inputs, weights)
    if isinstance(op, (Project, Input, Occlude)):
        return x
    raise AssertionError(f"no full implementation of {type(op).__name__}")


def upsample(x: Tensor, op: Upsample) -> Tensor:
    """Upsampling by integer factors along each spatial axis: nearest repeats each cell ``s``
    times per axis, zeros puts it at the block's first cell; linear is torch's
    (``align_corners=False``: linear, bilinear, trilinear) on the whole map."""
    d = op.scale.d
    if op.mode is UpsampleMode.NEAREST:
        for a, s in enumerate(op.scale):
            x = x.repeat_interleave(s, dim=2 + a)
        return x
    if op.mode is UpsampleMode.ZEROS:
        out = x.new_zeros(*x.shape[:2], *(n * s for n, s in zip(x.shape[2:], op.scale)))
        out[(slice(None), slice(None), *(slice(None, None, s) for s in op.scale))] = x
        return out
    size = [n * s for n, s in zip(x.shape[2:], op.scale)]
    linear = LINEAR_UPSAMPLING[d]
    scaled: Tensor = linear(x, size, False, None)
    return scaled


# torch's linear upsampling in 1, 2 and 3 axes, as exported models call it
LINEAR_UPSAMPLING = {
    1: torch.ops.aten.upsample_linear1d.vec,
    2: torch.ops.aten.upsample_bilinear2d.vec,
    3: torch.ops.aten.upsample_trilinear3d.vec,
}


def elementwise(op: Map | Scalar | BatchNorm, x: Tensor, weights: Weights) -> Tensor:
    if isinstance(op, Map):
        return ACTIVATIONS[op.fn](x, op)
    if isinstance(op, Scalar):
        return ARITH[op.arith](x, op.value)
    return F.batch_norm(
        x,
        weights[op.mean],
        weights[op.var],
        weights.get(op.weight),
        weights.get(op.bias),
        False,
        0.0,
        op.eps,
    )


def conv(
    x: Tensor, op: JoinAggregate, weights: Weights, *, with_padding: bool, bias: bool = True
) -> Tensor:
    """The convolution of ``[N, C, *spatial]`` maps in their number of spatial axes."""
    w, p = op.window, op.window.padding
    b = weights.get(op.bias) if bias else None
    padding: tuple[int, ...] = (0,) * w.d
    if with_padding and p.before == p.after:
        padding = p.before
    elif with_padding:
        x = F.pad(x, p.torch())
    convolve = CONVOLUTIONS[w.d]
    result: Tensor = convolve(
        x, weights[op.weight], b, w.stride.dims, padding, w.dilation.dims, op.groups
    )
    return result


CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def pool(x: Tensor, op: Pool, *, with_padding: bool) -> Tensor:
    """Max or average pooling of ``[N, C, *spatial]`` maps (pools pad alike on both sides).
    A 1-D average pool runs as a 2-D one of height 1: ``avg_pool1d`` has no divisor
    override."""
    w = op.window
    d = w.d
    padding = w.padding.before if with_padding else (0,) * d
    ceil = w.ceil_mode and with_padding
    if op.agg is Agg.MAX:
        maximum = getattr(F, f"max_pool{d}d")
        result: Tensor = maximum(x, w.kernel.dims, w.stride.dims, padding, w.dilation.dims, ceil)
        return result
    if d == 1:
        flat = F.avg_pool2d(x[:, :, None], (1, *w.kernel), (1, *w.stride), (0, *padding), ceil,
                            op.count_include_pad, op.divisor_override)  # fmt: skip
        return flat[:, :, 0]
    average = F.avg_pool2d if d == 2 else F.avg_pool3d
    return average(x, w.kernel.dims, w.stride.dims, padding, ceil, op.count_include_pad,
                   op.divisor_override)  # fmt: skip
