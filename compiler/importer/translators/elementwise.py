"""Translators of element-wise operators: activations, arithmetic, identities, and any other
ATen operator tagged point-wise."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from compiler.importer.translators.common import (
    Context,
    NotLocal,
    Translation,
    Translator,
    Value,
    pointwise,
    unsupported,
)
from compiler.ir import Activation, Arith, Combine, Map, Scalar

# Why well-known operators are not local (the fallback's explanation in explain).
_NOT_LOCAL = {
    "group_norm": "statistics over the whole map",
    "native_group_norm": "statistics over the whole map",
    "instance_norm": "statistics over the whole map",
    "upsample_bicubic2d": "bicubic upsampling has no box rule yet",
    "scaled_dot_product_attention": "attention: every token reads every token",
    "matmul": "a matrix product over tokens",
    "bmm": "a matrix product over tokens",
    "grid_sampler": "sampling at data-dependent positions",
}

SWAPPED = {Arith.SUB: Arith.RSUB, Arith.DIV: Arith.RDIV, Arith.ADD: Arith.ADD, Arith.MUL: Arith.MUL}


def _source(args: dict[str, Any]) -> Value:
    value = args.get("self", args.get("input"))
    assert isinstance(value, Value), value
    return value


def activation(fn: Activation) -> Translator:
    def translate(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
        source = _source(args)
        alpha, beta, kind = 0.0, 0.0, fn
        if fn is Activation.LEAKY_RELU:
            alpha = float(args["negative_slope"])
        elif fn is Activation.HARDTANH:
            alpha, beta = float(args["min_val"]), float(args["max_val"])
            if (alpha, beta) == (0.0, 6.0):
                kind, alpha, beta = Activation.RELU6, 0.0, 0.0
        elif fn is Activation.GELU and args.get("approximate", "none") != "none":
            return generic(node, args, ctx)
        return ctx.emit(node, Map(kind, alpha, beta), [source], ctx.like(node, source))

    return translate


def identity(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """Operators that return their input's values: no node."""
    return _source(args)


def dropout(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    if args.get("train"):
        raise unsupported(
            node,
            "dropout with training=True is random at inference — an occlusion heatmap of a "
            "random model means nothing; pass training=self.training or use nn.Dropout",
        )
    return _source(args)


def to_dtype(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.to``/``_to_copy`` that keeps the dtype is the identity; a cast is point-wise."""
    source = _source(args)
    value = node.meta.get("val")
    inputs = [a for a in node.all_input_nodes if "val" in a.meta]
    if value is not None and inputs and value.dtype == inputs[0].meta["val"].dtype:
        return source
    raise NotLocal("a change of dtype")


def arithmetic(arith: Arith) -> Translator:
    def translate(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
        left, right = args["self"], args["other"]
        alpha = args.get("alpha", 1)
        if alpha not in (None, 1):
            if isinstance(right, (int, float)) and arith in (Arith.ADD, Arith.SUB):
                right = right * alpha
            else:
                return generic(node, args, ctx)
        return combine(node, arith, left, right, ctx)

    return translate


def rsub(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """``aten.rsub``: ``other − alpha·self``."""
    if args.get("alpha", 1) not in (None, 1):
        return generic(node, args, ctx)
    return combine(node, Arith.SUB, args["other"], args["self"], ctx)


def combine(node: fx.Node, arith: Arith, left: Any, right: Any, ctx: Context) -> Value:
    """``left ∘ right`` where at least one side depends on the image."""
    left, right = ctx.as_scalar(left), ctx.as_scalar(right)
    if isinstance(right, (int, float)) and isinstance(left, Value):
        return ctx.emit(node, Scalar(arith, float(right)), [left], ctx.like(node, left))
    if isinstance(left, (int, float)) and isinstance(right, Value):
        op = Scalar(SWAPPED[arith], float(left))
        return ctx.emit(node, op, [right], ctx.like(node, right))
    if not (isinstance(left, Value) and isinstance(right, Value)):
        raise NotLocal("arithmetic on operands that are neither tensors nor numbers")
    image = left if not left.is_constant else right
    if left.is_constant or right.is_constant:
        constant = ctx.constant_for(left if left.is_constant else right, image)
        pair = [constant, right] if left.is_constant else [left, constant]
        return ctx.emit(node, Combine(arith), pair, ctx.like(node, image))
    out = ctx.like_shape(node, left, right)
    return ctx.emit(node, Combine(arith), [left, right], out)


def generic(node: fx.Node, args: dict[str, Any], ctx: Context) -> Translation:
    """An ATen operator tagged point-wise on one feature map (other operands constants that do
    not vary over space): a ``Pointwise`` node; anything else is not local."""
    target = node.target
    if not (isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags):
        name = target.overloadpacket.__name__ if isinstance(target, torch._ops.OpOverload) else ""
        raise NotLocal(_NOT_LOCAL.get(name.lstrip("_"), "no translation of this operator"))
    images = [v for v in args.values() if isinstance(v, Value) and not v.is_constant]
    if len(images) != 1:
        raise NotLocal("a point-wise operator of several feature maps")
    return pointwise(node, args, ctx, images[0], broadcast=True)
