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
from compiler.types import Agg
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
        return conv2d(inputs[0], op, weights, with_padding=True)
    if isinstance(op, Pool):
        return pool2d(inputs[0], op, with_padding=True)
    if isinstance(op, (Map, Scalar, BatchNorm)):
        return elementwise(op, inputs[0], weights)
    if isinstance(op, Pad):
        p = op.padding
        return F.pad(inputs[0], (p.left, p.right, p.top, p.bottom), value=op.value)
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
    """``scale · Σ_{y,x} A ⊙ W`` of ``[N, C, H, W]`` maps: ``[N, C]`` (``[N, C, 1, 1]`` with
    keepdim)."""
    height, width = x.shape[-2:]
    if op.weights is not None:
        x = x * region_weights(op, weights, height, width).to(x.dtype)
    return x.sum(dim=(-2, -1), keepdim=op.keepdim) * op.scale


def region_weights(op: RegionSum, weights: Weights, height: int, width: int) -> Tensor:
    """A region aggregate's weights as ``[1 or C, H, W]``."""
    assert op.weights is not None
    return weights[op.weights].reshape(-1, height, width)


def _global(node: Node, inputs: list[Tensor], weights: Weights) -> Tensor:
    op, x = node.op, inputs[0]
    if isinstance(op, GlobalAvgPool):
        return x.mean(dim=(2, 3), keepdim=op.keepdim)
    if isinstance(op, RegionSum):
        return region_sum(x, op, weights).reshape(len(x), *node.schema.shape)
    if isinstance(op, AdaptivePool):
        pool = F.adaptive_avg_pool2d if op.agg is Agg.AVG else F.adaptive_max_pool2d
        return pool(x, (op.output.h, op.output.w))
    if isinstance(op, Flatten):
        return x.reshape(len(x), -1)  # also one value per image → [N, 1]
    if isinstance(op, Linear):
        return F.linear(x, weights[op.weight], weights.get(op.bias))
    if isinstance(op, Softmax):
        return F.log_softmax(x, dim=1) if op.log else F.softmax(x, dim=1)
    if isinstance(op, Aten):
        return aten.fallback(op, inputs, weights)
    if isinstance(op, (Project, Input, Occlude)):
        return x
    raise AssertionError(f"no full implementation of {type(op).__name__}")


def upsample(x: Tensor, op: Upsample) -> Tensor:
    """Upsampling by integer factors: nearest repeats each cell ``s_h × s_w`` times, zeros puts
    it at the block's first cell; bilinear is torch's (``align_corners=False``) on the whole
    map."""
    if op.mode is UpsampleMode.NEAREST:
        return x.repeat_interleave(op.scale.h, dim=2).repeat_interleave(op.scale.w, dim=3)
    if op.mode is UpsampleMode.ZEROS:
        out = x.new_zeros(x.shape[0], x.shape[1], x.shape[2] * op.scale.h, x.shape[3] * op.scale.w)
        out[:, :, :: op.scale.h, :: op.scale.w] = x
        return out
    size = [x.shape[2] * op.scale.h, x.shape[3] * op.scale.w]
    scaled: Tensor = torch.ops.aten.upsample_bilinear2d.vec(x, size, False, None)
    return scaled


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


def conv2d(
    x: Tensor, op: JoinAggregate, weights: Weights, *, with_padding: bool, bias: bool = True
) -> Tensor:
    w, p = op.window, op.window.padding
    b = weights.get(op.bias) if bias else None
    padding: tuple[int, int] = (0, 0)
    if with_padding and p.top == p.bottom and p.left == p.right:
        padding = (p.top, p.left)
    elif with_padding:
        x = F.pad(x, (p.left, p.right, p.top, p.bottom))
    return F.conv2d(
        x,
        weights[op.weight],
        b,
        (w.stride.h, w.stride.w),
        padding,
        (w.dilation.h, w.dilation.w),
        op.groups,
    )


def pool2d(x: Tensor, op: Pool, *, with_padding: bool) -> Tensor:
    w = op.window
    kernel, stride = (w.kernel.h, w.kernel.w), (w.stride.h, w.stride.w)
    padding = (w.padding.top, w.padding.left) if with_padding else (0, 0)
    ceil = w.ceil_mode and with_padding
    if op.agg is Agg.MAX:
        return F.max_pool2d(x, kernel, stride, padding, (w.dilation.h, w.dilation.w), ceil)
    return F.avg_pool2d(x, kernel, stride, padding, ceil, op.count_include_pad, op.divisor_override)
