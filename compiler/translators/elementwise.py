"""Translators of element-wise operators: batch norm, activations, arithmetic, padding."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import fx, nn

from compiler.ir import (
    Activation,
    Arith,
    BatchNorm,
    Combine,
    Map,
    Pad,
    Scalar,
)
from compiler.translators.common import Translation, Translator, bind, unsupported
from compiler.types import Padding

if TYPE_CHECKING:
    from compiler.importer import ImportContext


def batch_norm_module(node: fx.Node, ctx: ImportContext) -> Translation:
    m = ctx.module(node, nn.BatchNorm2d)
    if m.running_mean is None or m.running_var is None:
        raise unsupported(node, "batch norm without running statistics")
    prefix = node.target
    op = BatchNorm(
        ctx.weight(f"{prefix}.running_mean"),
        ctx.weight(f"{prefix}.running_var"),
        ctx.weight(f"{prefix}.weight") if m.affine else None,
        ctx.weight(f"{prefix}.bias") if m.affine else None,
        float(m.eps),
    )
    return op, (node.args[0],)


def activation_module(fn: Activation) -> Translator:
    def translate(node: fx.Node, ctx: ImportContext) -> Translation:
        m = ctx.module(node, nn.Module)
        alpha, beta = 0.0, 0.0
        if fn is Activation.LEAKY_RELU:
            alpha = float(m.negative_slope)
        elif fn is Activation.HARDTANH:
            alpha, beta = float(m.min_val), float(m.max_val)
        elif fn is Activation.GELU and m.approximate != "none":
            raise unsupported(node, "GELU with approximate='tanh'")
        return Map(fn, alpha, beta), (node.args[0],)

    return translate


def activation_function(fn: Activation) -> Translator:
    def translate(node: fx.Node, ctx: ImportContext) -> Translation:
        alpha, beta = 0.0, 0.0
        if fn is Activation.LEAKY_RELU:
            alpha = float(
                bind(node, ("input", "negative_slope"), negative_slope=0.01)["negative_slope"]
            )
        elif fn is Activation.HARDTANH:
            args = bind(node, ("input", "min_val", "max_val"), min_val=-1.0, max_val=1.0)
            alpha, beta = float(args["min_val"]), float(args["max_val"])
        elif fn is Activation.GELU and node.kwargs.get("approximate", "none") != "none":
            raise unsupported(node, "GELU with approximate='tanh'")
        return Map(fn, alpha, beta), (node.args[0],)

    return translate


def stochastic_depth(node: fx.Node, ctx: ImportContext) -> Translation:
    """torchvision's stochastic depth is the identity at inference."""
    args = bind(node, ("input", "p", "mode", "training"), training=True)
    if args["training"]:
        raise unsupported(node, "stochastic depth in training mode")
    return Map(Activation.IDENTITY), (args["input"],)


def identity(node: fx.Node, ctx: ImportContext) -> Translation:
    return Map(Activation.IDENTITY), (node.args[0],)


def arithmetic(arith: Arith) -> Translator:
    swapped = {
        Arith.SUB: Arith.RSUB,
        Arith.DIV: Arith.RDIV,
        Arith.ADD: Arith.ADD,
        Arith.MUL: Arith.MUL,
    }

    def translate(node: fx.Node, ctx: ImportContext) -> Translation:
        left, right = node.args[0], node.args[1]
        if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("rounding_mode") is not None:
            raise unsupported(node, "alpha or rounding_mode arguments")
        left_t, right_t = isinstance(left, fx.Node), isinstance(right, fx.Node)
        if left_t and right_t:
            return Combine(arith), (left, right)
        if left_t and isinstance(right, (int, float)):
            return Scalar(arith, float(right)), (left,)
        if right_t and isinstance(left, (int, float)):
            return Scalar(swapped[arith], float(left)), (right,)
        raise unsupported(node, "arithmetic on non-tensor, non-number operands")

    return translate


def pad_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = bind(node, ("input", "pad", "mode", "value"), mode="constant", value=None)
    return _pad(node, tuple(args["pad"]), args["mode"], args["value"] or 0.0), (args["input"],)


def pad_module(node: fx.Node, ctx: ImportContext) -> Translation:
    m = ctx.module(node, nn.modules.padding._ConstantPadNd)
    return _pad(node, tuple(m.padding), "constant", float(m.value)), (node.args[0],)


def _pad(node: fx.Node, pad: tuple[int, ...], mode: str, value: float) -> Pad:
    if mode != "constant":
        raise unsupported(node, f"pad mode {mode!r} (only 'constant')")
    if len(pad) == 2:
        pad = (*pad, 0, 0)
    if len(pad) != 4 or any(p < 0 for p in pad):
        raise unsupported(node, f"pad {pad}: only non-negative padding of H and W")
    left, right, top, bottom = (int(p) for p in pad)
    return Pad(Padding(top, bottom, left, right), float(value))
