"""Translators of window operators: convolution, pooling, adaptive pooling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from compiler.ir import (
    AdaptivePool,
    GlobalAvgPool,
    JoinAggregate,
    Pool,
)
from compiler.translators.common import Translation, bind, unsupported
from compiler.types import Agg, Padding, Size2, Window

if TYPE_CHECKING:
    from compiler.importer import ImportContext


def _conv_window(node: fx.Node, kernel: Size2, stride: Any, padding: Any, dilation: Any) -> Window:
    stride_, dilation_ = Size2.of(stride), Size2.of(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            pad = Padding(0, 0, 0, 0)
        elif stride_ == Size2(1, 1):
            total_h, total_w = dilation_.h * (kernel.h - 1), dilation_.w * (kernel.w - 1)
            top, left = total_h // 2, total_w // 2
            pad = Padding(top, total_h - top, left, total_w - left)
        else:
            raise unsupported(node, "padding='same' with stride > 1")
    else:
        pad = Padding.symmetric(Size2.of(padding))
    return Window(kernel, stride_, dilation_, pad)


def conv2d_module(node: fx.Node, ctx: ImportContext) -> Translation:
    module = ctx.module(node, nn.Conv2d)
    if module.padding_mode != "zeros":
        raise unsupported(node, f"padding_mode={module.padding_mode!r} (only 'zeros')")
    kernel = Size2.of(module.kernel_size)
    window = _conv_window(node, kernel, module.stride, module.padding, module.dilation)
    weight = ctx.weight(f"{node.target}.weight")
    bias = ctx.weight(f"{node.target}.bias") if module.bias is not None else None
    return JoinAggregate(weight, bias, window, module.groups), (node.args[0],)


def conv2d_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = bind(
        node,
        ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
        bias=None,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
    )
    weight = ctx.weight_of(node, args["weight"])
    bias = ctx.weight_of(node, args["bias"]) if args["bias"] is not None else None
    kernel = Size2(weight.shape[2], weight.shape[3])
    window = _conv_window(node, kernel, args["stride"], args["padding"], args["dilation"])
    return JoinAggregate(weight, bias, window, int(args["groups"])), (args["input"],)


def _pool(node: fx.Node, agg: Agg, args: dict[str, Any]) -> Pool:
    if args.get("return_indices"):
        raise unsupported(node, "return_indices=True")
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


_MAX_POOL_ARGS = (
    "input",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "ceil_mode",
    "return_indices",
)
_AVG_POOL_ARGS = (
    "input",
    "kernel_size",
    "stride",
    "padding",
    "ceil_mode",
    "count_include_pad",
    "divisor_override",
)


def max_pool2d_module(node: fx.Node, ctx: ImportContext) -> Translation:
    m = ctx.module(node, nn.MaxPool2d)
    args = dict(
        kernel_size=m.kernel_size,
        stride=m.stride,
        padding=m.padding,
        dilation=m.dilation,
        ceil_mode=m.ceil_mode,
        return_indices=m.return_indices,
    )
    return _pool(node, Agg.MAX, args), (node.args[0],)


def avg_pool2d_module(node: fx.Node, ctx: ImportContext) -> Translation:
    m = ctx.module(node, nn.AvgPool2d)
    args = dict(
        kernel_size=m.kernel_size,
        stride=m.stride,
        padding=m.padding,
        ceil_mode=m.ceil_mode,
        count_include_pad=m.count_include_pad,
        divisor_override=m.divisor_override,
    )
    return _pool(node, Agg.AVG, args), (node.args[0],)


def max_pool2d_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = bind(
        node,
        _MAX_POOL_ARGS,
        stride=None,
        padding=0,
        dilation=1,
        ceil_mode=False,
        return_indices=False,
    )
    return _pool(node, Agg.MAX, args), (args["input"],)


def avg_pool2d_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = bind(
        node,
        _AVG_POOL_ARGS,
        stride=None,
        padding=0,
        ceil_mode=False,
        count_include_pad=True,
        divisor_override=None,
    )
    return _pool(node, Agg.AVG, args), (args["input"],)


def _adaptive(node: fx.Node, ctx: ImportContext, agg: Agg, source: fx.Node) -> Translation:
    size_in, size_out = ctx.schema(source).size, ctx.schema(node).size
    if size_out == Size2(1, 1) and agg is Agg.AVG:
        return GlobalAvgPool(keepdim=True), (source,)
    if size_in.h % size_out.h == 0 and size_in.w % size_out.w == 0:
        # Uniform windows: adaptive pooling is an ordinary local pool.
        kernel = Size2(size_in.h // size_out.h, size_in.w // size_out.w)
        window = Window(kernel, kernel, Size2(1, 1), Padding(0, 0, 0, 0))
        return Pool(agg, window), (source,)
    return AdaptivePool(agg, size_out), (source,)


def adaptive_avg_pool_module(node: fx.Node, ctx: ImportContext) -> Translation:
    return _adaptive(node, ctx, Agg.AVG, node.args[0])


def adaptive_max_pool_module(node: fx.Node, ctx: ImportContext) -> Translation:
    if ctx.module(node, nn.AdaptiveMaxPool2d).return_indices:
        raise unsupported(node, "return_indices=True")
    return _adaptive(node, ctx, Agg.MAX, node.args[0])


def adaptive_avg_pool_function(node: fx.Node, ctx: ImportContext) -> Translation:
    return _adaptive(node, ctx, Agg.AVG, node.args[0])


def adaptive_max_pool_function(node: fx.Node, ctx: ImportContext) -> Translation:
    if bind(node, ("input", "output_size", "return_indices")).get("return_indices"):
        raise unsupported(node, "return_indices=True")
    return _adaptive(node, ctx, Agg.MAX, node.args[0])
