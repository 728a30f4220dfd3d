"""Translators of window operators on ``[N, C, H, W]`` maps: convolution, pooling, adaptive
pooling, batch norm, constant padding and the mean over the spatial axes."""

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
from compiler.types import Agg, Padding, Size2, Window


def _conv_window(kernel: Size2, stride: Any, padding: Any, dilation: Any) -> Window:
    stride_, dilation_ = Size2.of(stride), Size2.of(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            pad = Padding.zero(2)
        else:  # "same" (stride 1 only, checked by torch): the extra cell goes after
            total_h, total_w = dilation_.h * (kernel.h - 1), dilation_.w * (kernel.w - 1)
            top, left = total_h // 2, total_w // 2
            pad = Padding.sides(top, total_h - top, left, total_w - left)
    else:
        pad = Padding.symmetric(Size2.of(padding))
    return Window(kernel, stride_, dilation_, pad)


def conv2d(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.conv2d`` (both overloads) and ``aten.convolution`` (transposed: see
    ``conv_transpose2d``)."""
    if args.get("transposed"):
        return conv_transpose2d(node, args, ctx)
    source = standard(args["input"], "a convolution")
    weight = ctx.weight(args["weight"], "a convolution's weight")
    if len(weight.shape) != 4:
        raise NotLocal(f"a convolution with a {len(weight.shape) - 2}-D kernel")
    bias = ctx.weight(args["bias"], "a convolution's bias") if args["bias"] is not None else None
    kernel = Size2(weight.shape[2], weight.shape[3])
    window = _conv_window(kernel, args["stride"], args["padding"], args["dilation"])
    op = JoinAggregate(weight, bias, window, int(args["groups"]))
    return ctx.emit(node, op, [source], ctx.like(node, source))


def conv_transpose2d(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.conv_transpose2d``: zero insertion, then an ordinary convolution — the textbook
    identity ``convT_{s,p,d,op}(A, K) = conv_{1, pad, d}(Z_s(A), flip(Kᵀ))`` with ``Z_s``
    placing each cell at ``(s·y, s·x)`` of an ``s·H × s·W`` map of zeros, ``Kᵀ`` the kernel
    with input and output channels swapped (per group), and padding ``d·(k − 1) − p`` before,
    ``d·(k − 1) − p + op − (s − 1)`` after (the last ``s − 1`` zero rows of ``Z_s`` stand for
    that much of the padding). Both halves are local, so the incremental rules see them: the
    changed cells of ``Z_s`` are the patch's own, and the convolution's box follows."""
    source = standard(args["input"], "a transposed convolution")
    if not isinstance(args["weight"], Value) or not args["weight"].is_constant:
        raise NotLocal("a transposed convolution without a model weight")
    weight = args["weight"].tensor
    if weight is None or weight.dim() != 4:
        raise NotLocal("a transposed convolution with a kernel that is not a 2-D model weight")
    stride, padding = Size2.of(args["stride"]), Size2.of(args["padding"])
    dilation, extra = Size2.of(args["dilation"]), Size2.of(args.get("output_padding", 0))
    groups = int(args["groups"])
    kh, kw = weight.shape[2], weight.shape[3]
    before = Size2(dilation.h * (kh - 1) - padding.h, dilation.w * (kw - 1) - padding.w)
    after = Size2(before.h + extra.h - (stride.h - 1), before.w + extra.w - (stride.w - 1))
    if min(before.h, before.w, after.h, after.w) < 0:
        raise NotLocal("a transposed convolution whose equivalent padding is negative")
    ins, outs = weight.shape[0], weight.shape[1] * groups
    kernel = (
        weight.reshape(groups, ins // groups, outs // groups, kh, kw)
        .transpose(1, 2)
        .reshape(outs, ins // groups, kh, kw)
        .flip(-2, -1)
        .contiguous()
    )
    path = args["weight"].ref.path if args["weight"].ref is not None else "weight"
    ref = ctx.register(kernel, f"{path} as a convolution")
    bias = ctx.weight(args["bias"], "a convolution's bias") if args["bias"] is not None else None
    layout = source.layout
    assert layout is not None
    channels, height, width = source.shape
    inserted = ctx.emit(
        node,
        Upsample(stride, UpsampleMode.ZEROS),
        [source],
        layout.with_shape((channels, height * stride.h, width * stride.w)),
    )
    window = Window(
        Size2(kh, kw), Size2(1, 1), dilation,
        Padding.sides(before.h, after.h, before.w, after.w), False,
    )  # fmt: skip
    return ctx.emit(
        node, JoinAggregate(ref, bias, window, groups), [inserted], ctx.like(node, source)
    )


def _pool(agg: Agg, args: dict[str, Any]) -> Pool:
    kernel = Size2.of(args["kernel_size"])
    stride = Size2.of(args["stride"]) if args["stride"] not in (None, []) else kernel
    window = Window(
        kernel,
        stride,
        Size2.of(args.get("dilation", 1)),
        Padding.symmetric(Size2.of(args["padding"])),
        bool(args["ceil_mode"]),
    )
    return Pool(
        agg, window, bool(args.get("count_include_pad", True)), args.get("divisor_override")
    )


def max_pool2d(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    source = standard(args["self"], "max pooling")
    return ctx.emit(node, _pool(Agg.MAX, args), [source], ctx.like(node, source))


def max_pool2d_with_indices(node: fx.Node, args: dict[str, Any], ctx: Context) -> Outputs:
    def item(getitem: fx.Node, index: int) -> Value:
        if index != 0:
            raise NotLocal("the indices of a max pool")
        return max_pool2d(getitem, args, ctx)  # type: ignore[return-value]

    return Outputs(item)


def avg_pool2d(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    source = standard(args["self"], "average pooling")
    return ctx.emit(node, _pool(Agg.AVG, args), [source], ctx.like(node, source))


def _adaptive(node: fx.Node, agg: Agg, value: Any, ctx: Context) -> Value:
    source = standard(value, "adaptive pooling")
    assert source.layout is not None
    layout = ctx.like(node, source)
    assert layout is not None  # the same axes as a feature map's
    size_in, size_out = Size2(*source.shape[1:]), Size2(*layout.shape[1:])
    if size_out == Size2(1, 1) and agg is Agg.AVG:
        return ctx.emit(node, GlobalAvgPool(keepdim=True), [source], layout)
    if size_in.h % size_out.h == 0 and size_in.w % size_out.w == 0:
        # Uniform windows: adaptive pooling is an ordinary local pool.
        kernel = Size2(size_in.h // size_out.h, size_in.w // size_out.w)
        window = Window(kernel, kernel, Size2(1, 1), Padding.zero(2))
        return ctx.emit(node, Pool(agg, window), [source], layout)
    return ctx.emit(node, AdaptivePool(agg, size_out), [source], layout)


def adaptive_avg_pool2d(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    return _adaptive(node, Agg.AVG, args["self"], ctx)


def adaptive_max_pool2d(node: fx.Node, args: dict[str, Any], ctx: Context) -> Outputs:
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
    """``aten.pad`` and ``aten.constant_pad_nd``: constant padding of H and W."""
    mode = args.get("mode", "constant")
    if mode != "constant":
        raise NotLocal(f"{mode} padding")
    source = standard(args["self"], "padding")
    amounts = tuple(int(p) for p in args["pad"])
    if len(amounts) == 2:
        amounts = (*amounts, 0, 0)
    if len(amounts) != 4 or any(p < 0 for p in amounts):
        raise NotLocal(f"padding {list(amounts)} (only non-negative padding of H and W)")
    left, right, top, bottom = amounts
    value = args.get("value")
    op = Pad(Padding.sides(top, bottom, left, right), float(value) if value is not None else 0.0)
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
    if axes == sorted((layout.h, layout.w)):
        keepdim = bool(args["keepdim"])
        if keepdim:
            return ctx.emit(node, GlobalAvgPool(True), [source], ctx.like(node, source))
        if len(layout.channel_shape) != 1:
            raise NotLocal("a mean over the spatial axes of a tensor with several channel axes")
        return ctx.emit(node, GlobalAvgPool(False), [source], None)
    if layout.h in axes and layout.w in axes:
        raise NotLocal("a mean over the spatial and the channel axes")
    if layout.h in axes or layout.w in axes:
        raise NotLocal("a mean over one spatial axis")
    return pointwise(node, args, ctx, source)


def _upsample(node: fx.Node, args: dict[str, Any], ctx: Context, mode: UpsampleMode) -> Value:
    source = standard(args.get("input", args.get("self")), f"{mode.value} upsampling")
    layout = ctx.like(node, source)
    assert layout is not None
    (_, h, w), (_, oh, ow) = source.shape, layout.shape
    if oh % h or ow % w:
        raise NotLocal(f"{mode.value} upsampling by a non-integer factor ({h}×{w} → {oh}×{ow})")
    return ctx.emit(node, Upsample(Size2(oh // h, ow // w), mode), [source], layout)


def upsample_nearest(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.upsample_nearest2d`` by integer factors (the output an exact multiple)."""
    return _upsample(node, args, ctx, UpsampleMode.NEAREST)


def upsample_bilinear(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.upsample_bilinear2d`` by integer factors with ``align_corners=False``."""
    if args.get("align_corners"):
        raise NotLocal("bilinear upsampling with align_corners=True (not shift-invariant)")
    return _upsample(node, args, ctx, UpsampleMode.BILINEAR)
