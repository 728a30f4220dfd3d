"""Translators of merges (concat) and global-context operators (flatten, mean, linear, softmax)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import fx, nn

from compiler.ir import (
    Concat,
    Flatten,
    GlobalAvgPool,
    Linear,
    Softmax,
)
from compiler.translators.common import Translation, Translator, bind, unsupported

if TYPE_CHECKING:
    from compiler.importer import ImportContext


# -- merges -----------------------------------------------------------------------------------


def cat_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = bind(node, ("tensors", "dim"), dim=0)
    tensors = tuple(args["tensors"])
    rank = len(ctx.schema(node).shape) + 1
    if args["dim"] not in (1, 1 - rank) or rank != 4:
        raise unsupported(node, f"cat along dim {args['dim']} (only channels, dim=1)")
    return Concat(), tensors


# -- global-context ---------------------------------------------------------------------------


def flatten_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = bind(node, ("input", "start_dim", "end_dim"), start_dim=0, end_dim=-1)
    return _flatten(node, args["start_dim"], args["end_dim"]), (args["input"],)


def flatten_module(node: fx.Node, ctx: ImportContext) -> Translation:
    m = ctx.module(node, nn.Flatten)
    return _flatten(node, m.start_dim, m.end_dim), (node.args[0],)


def _flatten(node: fx.Node, start: int, end: int) -> Flatten:
    if start != 1 or end != -1:
        raise unsupported(node, f"flatten(start_dim={start}, end_dim={end}) (only 1, -1)")
    return Flatten()


def reshape_method(node: fx.Node, ctx: ImportContext) -> Translation:
    """``x.view(x.size(0), -1)`` and ``x.reshape(-1, F)`` are flattens; nothing else is."""
    shape = node.args[1:]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    keeps_batch = len(shape) == 2 and (shape[0] == -1 or ctx.is_batch_size(shape[0]))
    if not keeps_batch or len(ctx.schema(node).shape) != 1:
        raise unsupported(node, "reshape other than flattening each image to a vector")
    return Flatten(), (node.args[0],)


def mean_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = bind(node, ("input", "dim", "keepdim"), dim=None, keepdim=False)
    dims = args["dim"]
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    if not all(isinstance(d, int) for d in dims) or sorted(d % 4 for d in dims) != [2, 3]:
        raise unsupported(node, f"mean over dims {dims} (only the spatial dims 2 and 3)")
    return GlobalAvgPool(keepdim=bool(args["keepdim"])), (args["input"],)


def linear_module(node: fx.Node, ctx: ImportContext) -> Translation:
    m = ctx.module(node, nn.Linear)
    bias = ctx.weight(f"{node.target}.bias") if m.bias is not None else None
    return Linear(ctx.weight(f"{node.target}.weight"), bias), (node.args[0],)


def linear_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = bind(node, ("input", "weight", "bias"), bias=None)
    bias = ctx.weight_of(node, args["bias"]) if args["bias"] is not None else None
    return Linear(ctx.weight_of(node, args["weight"]), bias), (args["input"],)


def softmax(log: bool, from_module: bool) -> Translator:
    def translate(node: fx.Node, ctx: ImportContext) -> Translation:
        if from_module:
            dim = ctx.module(node, nn.Module).dim
        else:
            dim = bind(node, ("input", "dim"), dim=None)["dim"]
        if len(ctx.schema(node).shape) != 1 or dim not in (1, -1):
            raise unsupported(node, "softmax other than over the classes of [N, K] scores")
        return Softmax(log), (node.args[0],)

    return translate
