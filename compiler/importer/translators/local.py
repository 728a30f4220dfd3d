"""Translators of window operators on ``[N, C, *spatial]`` maps of one, two or three spatial
axes: convolution (and transposed), pooling, adaptive pooling, batch norm, constant padding,
upsampling and the mean over the spatial axes."""

from __future__ import annotations

from typing import Any

from torch import fx

from compiler.importer.translators.common import (
    Context,
    NotLocal,
    Outputs,
    Translation,
    Value,
    axis,
    pointwise,
    spatial,
    standard,
    unsupported,
)
from compiler.ir import (
    AdaptivePool,
    BatchNorm,
    GlobalAvgPool,
    JoinAggregate,
    Pad,
    Pool,
    Upsample,
    UpsampleMode,
)
from compiler.types import Agg, Padding, Size, Window


def _conv_window(kernel: Size, stride: Any, padding: Any, dilation: Any) -> Window:
    d = kernel.d
    stride_, dilation_ = Size.of(stride, d), Size.of(dilation, d)
    if isinstance(padding, str):
        if padding == "valid":
            pad = Padding.zero(d)
        else:  # "same" (stride 1 only, checked by torch): the extra cell goes after
            total = dilation_.map(lambda di, k: di * (k - 1), kernel)
            before = total.map(lambda t: t // 2)
            pad = Padding(before.dims, tuple(t - b for t, b in zip(total, before)))
    else:
        pad = Padding.symmetric(Size.of(padding, d))
    return Window(kernel, stride_, dilation_, pad)


def convolution(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.conv1d``/``conv2d``/``conv3d`` and ``aten.convolution`` (transposed: see
    ``conv_transpose``): a join of the map with the kernel over every spatial axis."""
    if args.get("transposed"):
        return conv_transpose(node, args, ctx)
    source = standard(args["input"], "a convolution")
    weight = ctx.weight(args["weight"], "a convolution's weight")
    d = len(source.shape) - 1
    if len(weight.shape) != d + 2:
        raise NotLocal(f"a convolution with a {len(weight.shape) - 2}-D kernel on a {d}-D map")
    bias = ctx.weight(args["bias"], "a convolution's bias") if args["bias"] is not None else None
    kernel = Size(*weight.shape[2:])
    window = _conv_window(kernel, args["stride"], args["padding"], args["dilation"])
    op = JoinAggregate(weight, bias, window, int(args["groups"]))
    return ctx.emit(node, op, [source], ctx.like(node, source))


def conv_transpose(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.conv_transpose1d/2d/3d``: zero insertion, then an ordinary convolution — the
    textbook identity ``convT_{s,p,d,op}(A, K) = conv_{1, pad, d}(Z_s(A), flip(Kᵀ))`` with
    ``Z_s`` placing each cell at ``s·i`` along every axis of a map of zeros ``s`` times as
    long, ``Kᵀ`` the kernel with input and output channels swapped (per group), and padding
    ``d·(k − 1) − p`` before, ``d·(k − 1) − p + op − (s − 1)`` after (the last ``s − 1`` zero
    cells of ``Z_s`` stand for that much of the padding). Both halves are local, so the
    incremental rules see them: the changed cells of ``Z_s`` are the patch's own, and the
    convolution's box follows."""
    source = standard(args["input"], "a transposed convolution")
    if not isinstance(args["weight"], Value) or not args["weight"].is_constant:
        raise NotLocal("a transposed convolution without a model weight")
    weight = args["weight"].tensor
    d = len(source.shape) - 1
    if weight is None or weight.dim() != d + 2:
        raise NotLocal(f"a transposed convolution whose kernel is not a {d}-D model weight")
    stride, padding = Size.of(args["stride"], d), Size.of(args["padding"], d)
    dilation, extra = Size.of(args["dilation"], d), Size.of(args.get("output_padding", 0), d)
    groups = int(args["groups"])
    size = Size(*weight.shape[2:])
    before = dilation.map(lambda di, k, p: di * (k - 1) - p, size, padding)
    after = before.map(lambda b, e, s: b + e - (s - 1), extra, stride)
    if min(*before, *after) < 0:
        raise NotLocal("a transposed convolution whose equivalent padding is negative")
    ins, outs = weight.shape[0], weight.shape[1] * groups
    spatial_axes = tuple(range(-d, 0))
    kernel = (
        weight.reshape(groups, ins // groups, outs // groups, *size)
        .transpose(1, 2)
        .reshape(outs, ins // groups, *size)
        .flip(spatial_axes)
        .contiguous()
    )
    path = args["weight"].ref.path if args["weight"].ref is not None else "weight"
    ref = ctx.register(kernel, f"{path} as a convolution")
    bias = ctx.weight(args["bias"], "a convolution's bias") if args["bias"] is not None else None
    layout = source.layout
    assert layout is not None
    channels, *cells = source.shape
    inserted = ctx.emit(
        node,
        Upsample(stride, UpsampleMode.ZEROS),
        [source],
        layout.with_shape((channels, *(n * s for n, s in zip(cells, stride)))),
    )
    window = Window(size, Size.ones(d), dilation, Padding(before.dims, after.dims), False)
    return ctx.emit(
        node, JoinAggregate(ref, bias, window, groups), [inserted], ctx.like(node, source)
    )


def _pool(agg: Agg, args: dict[str, Any], d: int) -> Pool:
    kernel = Size.of(args["kernel_size"], d)
    stride = Size.of(args["stride"], d) if args["stride"] not in (None, []) else kernel
    window = Window(
        kernel,
        stride,
        Size.of(args.get("dilation", 1), d),
        Padding.symmetric(Size.of(args["padding"], d)),
        bool(args["ceil_mode"]),
    )
    return Pool(
        agg, window, bool(args.get("count_include_pad", True)), args.get("divisor_override")
    )


def max_pool(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.max_pool1d/2d/3d``."""
    source = standard(args["self"], "max pooling")
    pool = _pool(Agg.MAX, args, len(source.shape) - 1)
    return ctx.emit(node, pool, [source], ctx.like(node, source))


def max_pool_with_indices(node: fx.Node, args: dict[str, Any], ctx: Context) -> Outputs:
    def item(getitem: fx.Node, index: int) -> Value:
        if index != 0:
            raise NotLocal("the indices of a max pool")
        return max_pool(getitem, args, ctx)  # type: ignore[return-value]

    return Outputs(item)


def avg_pool(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.avg_pool1d/2d/3d`` with every divisor rule."""
    source = standard(args["self"], "average pooling")
    pool = _pool(Agg.AVG, args, len(source.shape) - 1)
    return ctx.emit(node, pool, [source], ctx.like(node, source))


def _adaptive(node: fx.Node, agg: Agg, value: Any, ctx: Context) -> Value:
    source = standard(value, "adaptive pooling")
    assert source.layout is not None
    layout = ctx.like(node, source)
    assert layout is not None  # the same axes as a feature map's
    size_in, size_out = Size(*source.shape[1:]), Size(*layout.shape[1:])
    if size_out == Size.ones(size_out.d) and agg is Agg.AVG:
        return ctx.emit(node, GlobalAvgPool(keepdim=True), [source], layout)
    if all(i % o == 0 for i, o in zip(size_in, size_out)):
        # Uniform windows: adaptive pooling is an ordinary local pool.
        kernel = size_in.map(lambda i, o: i // o, size_out)
        window = Window(kernel, kernel, Size.ones(kernel.d), Padding.zero(kernel.d))
        return ctx.emit(node, Pool(agg, window), [source], layout)
    return ctx.emit(node, AdaptivePool(agg, size_out), [source], layout)


def adaptive_avg_pool(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    return _adaptive(node, Agg.AVG, args["self"], ctx)


def adaptive_max_pool(node: fx.Node, args: dict[str, Any], ctx: Context) -> Outputs:
    def item(getitem: fx.Node, index: int) -> Value:
        if index != 0:
            raise NotLocal("the indices of an adaptive max pool")
        return _adaptive(getitem, Agg.MAX, args["self"], ctx)

    return Outputs(item)


def batch_norm(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.batch_norm`` in inference: a per-channel affine map."""
    if args.get("training", False):
        raise unsupported(
            node, "batch norm with batch statistics (no running statistics, or training mode)"
        )
    source = standard(args["input"], "batch norm")
    mean, var = args["running_mean"], args["running_var"]
    if mean is None or var is None:
        raise unsupported(node, "batch norm without running statistics")
    weight, bias = args["weight"], args["bias"]
    op = BatchNorm(
        ctx.weight(mean, "running mean"),
        ctx.weight(var, "running variance"),
        ctx.weight(weight, "batch norm weight") if weight is not None else None,
        ctx.weight(bias, "batch norm bias") if bias is not None else None,
        float(args["eps"]),
    )
    return ctx.emit(node, op, [source], ctx.like(node, source))


def batch_norm_no_training(node: fx.Node, args: dict[str, Any], ctx: Context) -> Outputs:
    """``aten._native_batch_norm_legit_no_training`` (functionalized graphs): item 0."""

    def item(getitem: fx.Node, index: int) -> Value:
        if index != 0:
            raise unsupported(node, "batch norm's saved statistics")
        return batch_norm(getitem, {**args, "training": False}, ctx)  # type: ignore[return-value]

    return Outputs(item)


def pad(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.pad`` and ``aten.constant_pad_nd``: constant padding of the spatial axes (the
    last axis first, as ``F.pad`` takes them; axes it does not name get none)."""
    mode = args.get("mode", "constant")
    if mode != "constant":
        raise NotLocal(f"{mode} padding")
    source = standard(args["self"], "padding")
    d = len(source.shape) - 1
    amounts = [int(p) for p in args["pad"]]
    if len(amounts) % 2 or len(amounts) > 2 * d or any(p < 0 for p in amounts):
        raise NotLocal(f"padding {amounts} (only non-negative padding of the spatial axes)")
    amounts += [0] * (2 * d - len(amounts))
    before = tuple(reversed(amounts[0::2]))  # F.pad lists the last axis first
    after = tuple(reversed(amounts[1::2]))
    value = args.get("value")
    op = Pad(Padding(before, after), float(value) if value is not None else 0.0)
    return ctx.emit(node, op, [source], ctx.like(node, source))


def mean(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.mean.dim`` over exactly the spatial axes: the global average pool."""
    source = spatial(args["self"], "a mean of a tensor that is not a feature map")
    layout = source.layout
    assert layout is not None
    rank = len(layout.shape) + 1
    dims = args.get("dim") or list(range(rank))
    axes = sorted(axis(int(d), rank) - 1 for d in dims)
    if args.get("dtype") is not None:
        raise NotLocal("a mean with a dtype")
    if axes == sorted(layout.axes):
        keepdim = bool(args["keepdim"])
        if keepdim:
            return ctx.emit(node, GlobalAvgPool(True), [source], ctx.like(node, source))
        if len(layout.channel_shape) != 1:
            raise NotLocal("a mean over the spatial axes of a tensor with several channel axes")
        return ctx.emit(node, GlobalAvgPool(False), [source], None)
    spatial_axes = set(layout.axes) & set(axes)
    if spatial_axes == set(layout.axes):
        raise NotLocal("a mean over the spatial and the channel axes")
    if spatial_axes:
        raise NotLocal("a mean over some of the spatial axes")
    return pointwise(node, args, ctx, source)


def _upsample(node: fx.Node, args: dict[str, Any], ctx: Context, mode: UpsampleMode) -> Value:
    source = standard(args.get("input", args.get("self")), f"{mode.value} upsampling")
    layout = ctx.like(node, source)
    assert layout is not None
    cells, out = source.shape[1:], layout.shape[1:]
    if any(o % n for n, o in zip(cells, out)):
        shapes = f"{'×'.join(map(str, cells))} → {'×'.join(map(str, out))}"
        raise NotLocal(f"{mode.value} upsampling by a non-integer factor ({shapes})")
    scale = Size(*(o // n for n, o in zip(cells, out)))
    return ctx.emit(node, Upsample(scale, mode), [source], layout)


def upsample_nearest(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.upsample_nearest1d/2d/3d`` by integer factors (the output an exact multiple)."""
    return _upsample(node, args, ctx, UpsampleMode.NEAREST)


def upsample_linear(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.upsample_linear1d/bilinear2d/trilinear3d`` by integer factors with
    ``align_corners=False``."""
    if args.get("align_corners"):
        raise NotLocal("linear upsampling with align_corners=True (not shift-invariant)")
    return _upsample(node, args, ctx, UpsampleMode.BILINEAR)
