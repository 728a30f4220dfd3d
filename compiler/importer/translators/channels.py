"""Translators of layout and channel operators: permutes and reshapes that move the spatial
axes (no node while the channel order is kept), and the per-position operators on the channel
axes — layer norm, a linear layer on a channels-last tensor, channel slices, splits and
concatenation, softmax and sums over channels — plus their forms on class-score vectors."""

from __future__ import annotations

import math
from typing import Any

from torch import fx

from compiler.importer.translators.common import (
    Context,
    NotLocal,
    Outputs,
    Translation,
    Translator,
    Value,
    axis,
    pointwise,
    spatial,
)
from compiler.ir import Concat, Flatten, Linear, RegionSum, Softmax
from compiler.types import Layout


def _channel_axis(source: Value, dim: int, what: str) -> int:
    """The per-image axis of ``dim``; ``NotLocal`` if it is the batch or a spatial axis."""
    layout = source.layout
    assert layout is not None
    index = axis(int(dim), len(layout.shape) + 1) - 1
    if index < 0:
        raise NotLocal(f"{what} along the batch axis")
    if index in layout.axes:
        raise NotLocal(f"{what} along a spatial axis")
    return index


def _without(layout: Layout, removed: list[int], shape: tuple[int, ...]) -> Layout:
    """``layout`` after the channel axes ``removed`` are dropped, the result of ``shape``."""
    return Layout(shape, tuple(s - sum(a < s for a in removed) for s in layout.axes))


# -- layout -------------------------------------------------------------------------------


def reshaped(layout: Layout, shape: tuple[int, ...]) -> Layout | None:
    """The layout after a row-major reshape to ``shape``, if each spatial axis survives as one
    axis of its own (then the channel order is kept: no data moves); else ``None``.

    >>> reshaped(Layout((96, 7, 7), (1, 2)), (4, 24, 7, 7))
    Layout(shape=(4, 24, 7, 7), axes=(2, 3))
    >>> reshaped(Layout((96, 7, 7), (1, 2)), (96, 49)) is None
    True
    """

    def kept(index: int, start: int = 0, taken: int = -1) -> int | None:
        before, size = math.prod(layout.shape[:index]), layout.shape[index]
        for new in range(start, len(shape)):
            if new != taken and shape[new] == size and math.prod(shape[:new]) == before:
                return new
        return None

    # Size-1 axes match in several places: keep the spatial axes in their order.
    found: dict[int, int] = {}
    start, taken = 0, -1
    for old in sorted(layout.axes):
        new = kept(old, start, taken)
        if new is None:
            return None
        found[old], start, taken = new, new + 1, new
    if math.prod(shape) != math.prod(layout.shape):
        return None
    return Layout(tuple(shape), tuple(found[a] for a in layout.axes))


def reshape(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``view``, ``reshape``, ``flatten``, ``unflatten``, ``squeeze``, ``unsqueeze``: a new
    layout of the same relation, or ``Flatten`` of a whole map into a vector."""
    source = args.get("self", args.get("input"))
    assert isinstance(source, Value)
    shape = ctx.out_shape(node)
    if not source.is_spatial:
        if shape == source.shape:
            return source
        if len(shape) == 1 and source.name is not None and len(source.shape) < 1:
            return ctx.emit(node, Flatten(), [source], None)  # a score per image → [N, 1]
        raise NotLocal("a reshape of a tensor that is not a feature map")
    assert source.layout is not None
    if node.meta["val"].shape[0] != 1:
        raise NotLocal("a reshape that merges the batch axis with others")
    layout = reshaped(source.layout, shape)
    if layout is not None:
        return Value(source.name, shape, layout)
    if source.layout.is_standard and shape == (math.prod(source.shape),):
        return ctx.emit(node, Flatten(), [source], None)
    raise NotLocal("a reshape that merges the spatial axes with others")


def permute(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    source = spatial(args["self"], "a permute of a tensor that is not a feature map")
    layout = source.layout
    assert layout is not None
    rank = len(layout.shape) + 1
    if "dims" in args:
        dims = [axis(int(d), rank) for d in args["dims"]]
    else:  # transpose
        dims = list(range(rank))
        a, b = axis(int(args["dim0"]), rank), axis(int(args["dim1"]), rank)
        dims[a], dims[b] = dims[b], dims[a]
    if dims[0] != 0:
        raise NotLocal("a permute that moves the batch axis")
    order = [d - 1 for d in dims[1:]]
    shape = tuple(layout.shape[d] for d in order)
    new = Layout(shape, tuple(order.index(a) for a in layout.axes))
    before = [a for a in layout.channel_axes if layout.shape[a] > 1]
    after = [order[a] for a in new.channel_axes if shape[a] > 1]
    if before == after:  # only the spatial axes moved: the same relation
        return Value(source.name, shape, new)
    return pointwise(node, args, ctx, source, out=new)  # a channel shuffle


# -- per-position operators on channels ------------------------------------------------------


def slice_(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``slice`` and ``narrow`` along a channel axis."""
    source = spatial(args["self"], "a slice of a tensor that is not a feature map")
    _channel_axis(source, args["dim"], "a slice")
    return pointwise(node, args, ctx, source)


def select(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    source = spatial(args["self"], "a select of a tensor that is not a feature map")
    assert source.layout is not None
    index = _channel_axis(source, args["dim"], "a select")
    out = _without(source.layout, [index], ctx.out_shape(node))
    return pointwise(node, args, ctx, source, out=out)


def split(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``split``, ``split_with_sizes``, ``chunk`` and ``unbind`` along a channel axis."""
    source = spatial(args["self"], "a split of a tensor that is not a feature map")
    assert source.layout is not None
    index = _channel_axis(source, args.get("dim", 0), "a split")
    removes = "unbind" in str(node.target)

    def item(getitem: fx.Node, number: int) -> Value:
        shape = ctx.out_shape(getitem)
        assert source.layout is not None
        out = (
            _without(source.layout, [index], shape) if removes else source.layout.with_shape(shape)
        )
        return pointwise(node, args, ctx, source, out=out, item=number, at=getitem)

    return Outputs(item)


def layer_norm(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """Layer norm over channel axes only (ConvNeXt's channels-last norm): per position."""
    source = spatial(args["input"], "layer norm of a tensor that is not a feature map")
    assert source.layout is not None
    count = len(args["normalized_shape"])
    normalized = range(len(source.layout.shape) - count, len(source.layout.shape))
    if any(a in normalized for a in source.layout.axes):
        raise NotLocal("layer norm over the spatial axes")
    return pointwise(node, args, ctx, source)


def linear(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """A linear layer on class-score vectors, or on the channel axis of a channels-last map
    (a 1×1 convolution, per position)."""
    source = args["input"]
    assert isinstance(source, Value)
    weight = ctx.weight(args["weight"], "a linear layer's weight")
    bias = ctx.weight(args["bias"], "a linear layer's bias") if args["bias"] is not None else None
    if source.is_spatial:
        assert source.layout is not None
        _channel_axis(source, -1, "a linear layer")
        per_cell = math.prod(source.layout.channel_shape) * weight.shape[0]
        return pointwise(node, args, ctx, source, fma_per_cell=per_cell)
    if len(source.shape) != 1:
        raise NotLocal(f"a linear layer on a tensor of shape {list(source.shape)} per image")
    return ctx.emit(node, Linear(weight, bias), [source], None)


def softmax(log: bool) -> Translator:
    def translate(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
        source = args["self"]
        assert isinstance(source, Value)
        if source.is_spatial:
            _channel_axis(source, args["dim"], "a softmax")
            return pointwise(node, args, ctx, source)
        if len(source.shape) != 1 or axis(int(args["dim"]), 2) != 1:
            raise NotLocal("a softmax other than over the classes of [N, K] scores")
        if args.get("dtype") is not None or args.get("half_to_float"):
            raise NotLocal("a softmax with a dtype")
        return ctx.emit(node, Softmax(log), [source], None)

    return translate


def spatial_sum(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation | None:
    """``aten.sum.dim_IntList`` over exactly the spatial axes: a region aggregate with every
    weight 1 (``fold_mask_into_region_sum`` gives it a mask's weights); ``None`` for a sum
    over other axes."""
    source = args["self"]
    if not isinstance(source, Value) or source.is_constant or source.layout is None:
        return None
    layout = source.layout
    rank = len(layout.shape) + 1
    dims = args.get("dim")
    if not dims or sorted(axis(int(d), rank) - 1 for d in dims) != sorted(layout.axes):
        return None
    if args.get("dtype") is not None:
        raise NotLocal("a sum with a dtype")
    if args["keepdim"]:
        return ctx.emit(node, RegionSum(None, 1.0, True), [source], ctx.like(node, source))
    if len(layout.channel_shape) > 1:
        raise NotLocal("a sum over the spatial axes of a tensor with several channel axes")
    return ctx.emit(node, RegionSum(None, 1.0, False), [source], None)


def reduce_channels(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``sum``/``mean``/``amax`` over channel axes only (selective-kernel branch sums); a sum
    over exactly the spatial axes is a region aggregate (``local.spatial_sum``)."""
    if "sum" in str(node.target):
        aggregate = spatial_sum(node, args, ctx)
        if aggregate is not None:
            return aggregate
    source = spatial(args["self"], "a reduction of a tensor that is not a feature map")
    assert source.layout is not None
    dims = args.get("dim")
    if not dims:
        raise NotLocal("a reduction over every axis")
    axes = [_channel_axis(source, d, "a reduction") for d in dims]
    shape = ctx.out_shape(node)
    keep = len(shape) == len(source.layout.shape)
    out = source.layout.with_shape(shape) if keep else _without(source.layout, axes, shape)
    return pointwise(node, args, ctx, source, out=out)


def cat(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """Concatenation of feature maps along their (first) channel axis."""
    tensors = list(args["tensors"])
    if not all(isinstance(t, Value) and t.is_spatial for t in tensors):
        raise NotLocal("a concatenation of tensors that are not all feature maps")
    first = tensors[0]
    assert first.layout is not None
    index = _channel_axis(first, args["dim"], "a concatenation")
    layouts = [t.layout for t in tensors]
    same = all(
        lay is not None
        and lay.axes == first.layout.axes
        and len(lay.shape) == len(first.layout.shape)
        and all(lay.shape[a] == first.layout.shape[a] for a in range(len(lay.shape)) if a != index)
        for lay in layouts
    )
    if not same or index != first.layout.channel_axes[0]:
        raise NotLocal("a concatenation along an inner channel axis")
    return ctx.emit(node, Concat(), tensors, ctx.like(node, first))


def stack(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """Stacking feature maps along a new outermost channel axis: a concatenation."""
    tensors = list(args["tensors"])
    if not all(isinstance(t, Value) and t.is_spatial for t in tensors):
        raise NotLocal("a stack of tensors that are not all feature maps")
    first = tensors[0].layout
    assert first is not None
    if any(t.layout != first for t in tensors):
        raise NotLocal("a stack of feature maps in different layouts")
    index = axis(int(args["dim"]), len(first.shape) + 2) - 1
    if index < 0:
        raise NotLocal("a stack along the batch axis")
    out = Layout(ctx.out_shape(node), tuple(a + (index <= a) for a in first.axes))
    if out.channel_axes[0] != index:
        raise NotLocal("a stack along an inner channel axis")
    return ctx.emit(node, Concat(), tensors, out)
