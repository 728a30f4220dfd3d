"""One small translator per torch module, function or method: fx node -> IR operator.

A translator receives the fx node and the ``ImportContext`` and returns the operator and the fx
nodes it reads. Tables at the bottom map torch targets to translators; they are plain dicts
built once at import, not registries that code elsewhere mutates.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from compiler.errors import UnsupportedOperationError
from compiler.ir import (
    Activation,
    AdaptivePool,
    Arith,
    BatchNorm,
    Combine,
    Concat,
    Flatten,
    GlobalAvgPool,
    JoinAggregate,
    Linear,
    Map,
    Operator,
    Pad,
    Pool,
    Scalar,
    Softmax,
)
from compiler.types import Agg, Padding, Size2, Window

if TYPE_CHECKING:
    from compiler.importer import ImportContext

Translation = tuple[Operator, tuple[fx.Node, ...]]
Translator = Callable[[fx.Node, "ImportContext"], Translation]


def _bind(node: fx.Node, names: Sequence[str], **defaults: Any) -> dict[str, Any]:
    """Positional and keyword arguments of a call, by parameter name."""
    values = dict(defaults)
    values.update(zip(names, node.args))
    values.update(node.kwargs)
    return values


def _unsupported(node: fx.Node, why: str) -> UnsupportedOperationError:
    return UnsupportedOperationError(
        f"fx node {node.name!r} (target {_target_name(node)}) is not supported: {why}"
    )


def _target_name(node: fx.Node) -> str:
    """A readable name of a call's target: ``F.relu``, ``operator.add``, ``torch.flatten``."""
    target = node.target
    if isinstance(target, str):
        return target
    name = getattr(target, "__name__", None) or repr(target)
    module = getattr(target, "__module__", None) or "torch"
    prefixes = {"torch.nn.functional": "F", "_operator": "operator"}
    prefix = prefixes.get(module, "torch" if module.startswith("torch") else module)
    return f"{prefix}.{name}"


# -- convolution and pooling ------------------------------------------------------------------


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
            raise _unsupported(node, "padding='same' with stride > 1")
    else:
        pad = Padding.symmetric(Size2.of(padding))
    return Window(kernel, stride_, dilation_, pad)


def conv2d_module(node: fx.Node, ctx: ImportContext) -> Translation:
    module = ctx.module(node, nn.Conv2d)
    if module.padding_mode != "zeros":
        raise _unsupported(node, f"padding_mode={module.padding_mode!r} (only 'zeros')")
    kernel = Size2.of(module.kernel_size)
    window = _conv_window(node, kernel, module.stride, module.padding, module.dilation)
    weight = ctx.weight(f"{node.target}.weight")
    bias = ctx.weight(f"{node.target}.bias") if module.bias is not None else None
    return JoinAggregate(weight, bias, window, module.groups), (node.args[0],)


def conv2d_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = _bind(
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
        raise _unsupported(node, "return_indices=True")
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
    args = _bind(
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
    args = _bind(
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
        raise _unsupported(node, "return_indices=True")
    return _adaptive(node, ctx, Agg.MAX, node.args[0])


def adaptive_avg_pool_function(node: fx.Node, ctx: ImportContext) -> Translation:
    return _adaptive(node, ctx, Agg.AVG, node.args[0])


def adaptive_max_pool_function(node: fx.Node, ctx: ImportContext) -> Translation:
    if _bind(node, ("input", "output_size", "return_indices")).get("return_indices"):
        raise _unsupported(node, "return_indices=True")
    return _adaptive(node, ctx, Agg.MAX, node.args[0])


# -- element-wise -----------------------------------------------------------------------------


def batch_norm_module(node: fx.Node, ctx: ImportContext) -> Translation:
    m = ctx.module(node, nn.BatchNorm2d)
    if m.running_mean is None or m.running_var is None:
        raise _unsupported(node, "batch norm without running statistics")
    prefix = node.target
    op = BatchNorm(
        ctx.weight(f"{prefix}.running_mean"),
        ctx.weight(f"{prefix}.running_var"),
        ctx.weight(f"{prefix}.weight") if m.affine else None,
        ctx.weight(f"{prefix}.bias") if m.affine else None,
        float(m.eps),
    )
    return op, (node.args[0],)


def _activation_module(fn: Activation) -> Translator:
    def translate(node: fx.Node, ctx: ImportContext) -> Translation:
        m = ctx.module(node, nn.Module)
        alpha, beta = 0.0, 0.0
        if fn is Activation.LEAKY_RELU:
            alpha = float(m.negative_slope)
        elif fn is Activation.HARDTANH:
            alpha, beta = float(m.min_val), float(m.max_val)
        elif fn is Activation.GELU and m.approximate != "none":
            raise _unsupported(node, "GELU with approximate='tanh'")
        return Map(fn, alpha, beta), (node.args[0],)

    return translate


def _activation_function(fn: Activation) -> Translator:
    def translate(node: fx.Node, ctx: ImportContext) -> Translation:
        alpha, beta = 0.0, 0.0
        if fn is Activation.LEAKY_RELU:
            alpha = float(
                _bind(node, ("input", "negative_slope"), negative_slope=0.01)["negative_slope"]
            )
        elif fn is Activation.HARDTANH:
            args = _bind(node, ("input", "min_val", "max_val"), min_val=-1.0, max_val=1.0)
            alpha, beta = float(args["min_val"]), float(args["max_val"])
        elif fn is Activation.GELU and node.kwargs.get("approximate", "none") != "none":
            raise _unsupported(node, "GELU with approximate='tanh'")
        return Map(fn, alpha, beta), (node.args[0],)

    return translate


def identity(node: fx.Node, ctx: ImportContext) -> Translation:
    return Map(Activation.IDENTITY), (node.args[0],)


def _arithmetic(arith: Arith) -> Translator:
    swapped = {
        Arith.SUB: Arith.RSUB,
        Arith.DIV: Arith.RDIV,
        Arith.ADD: Arith.ADD,
        Arith.MUL: Arith.MUL,
    }

    def translate(node: fx.Node, ctx: ImportContext) -> Translation:
        left, right = node.args[0], node.args[1]
        if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("rounding_mode") is not None:
            raise _unsupported(node, "alpha or rounding_mode arguments")
        left_t, right_t = isinstance(left, fx.Node), isinstance(right, fx.Node)
        if left_t and right_t:
            if arith is Arith.DIV:
                raise _unsupported(node, "division of two tensors")
            return Combine(arith), (left, right)
        if left_t and isinstance(right, (int, float)):
            return Scalar(arith, float(right)), (left,)
        if right_t and isinstance(left, (int, float)):
            return Scalar(swapped[arith], float(left)), (right,)
        raise _unsupported(node, "arithmetic on non-tensor, non-number operands")

    return translate


def pad_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = _bind(node, ("input", "pad", "mode", "value"), mode="constant", value=None)
    return _pad(node, tuple(args["pad"]), args["mode"], args["value"] or 0.0), (args["input"],)


def pad_module(node: fx.Node, ctx: ImportContext) -> Translation:
    m = ctx.module(node, nn.modules.padding._ConstantPadNd)
    return _pad(node, tuple(m.padding), "constant", float(m.value)), (node.args[0],)


def _pad(node: fx.Node, pad: tuple[int, ...], mode: str, value: float) -> Pad:
    if mode != "constant":
        raise _unsupported(node, f"pad mode {mode!r} (only 'constant')")
    if len(pad) == 2:
        pad = (*pad, 0, 0)
    if len(pad) != 4 or any(p < 0 for p in pad):
        raise _unsupported(node, f"pad {pad}: only non-negative padding of H and W")
    left, right, top, bottom = (int(p) for p in pad)
    return Pad(Padding(top, bottom, left, right), float(value))


# -- merges -----------------------------------------------------------------------------------


def cat_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = _bind(node, ("tensors", "dim"), dim=0)
    tensors = tuple(args["tensors"])
    rank = len(ctx.schema(node).shape) + 1
    if args["dim"] not in (1, 1 - rank) or rank != 4:
        raise _unsupported(node, f"cat along dim {args['dim']} (only channels, dim=1)")
    return Concat(), tensors


# -- global-context ---------------------------------------------------------------------------


def flatten_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = _bind(node, ("input", "start_dim", "end_dim"), start_dim=0, end_dim=-1)
    return _flatten(node, args["start_dim"], args["end_dim"]), (args["input"],)


def flatten_module(node: fx.Node, ctx: ImportContext) -> Translation:
    m = ctx.module(node, nn.Flatten)
    return _flatten(node, m.start_dim, m.end_dim), (node.args[0],)


def _flatten(node: fx.Node, start: int, end: int) -> Flatten:
    if start != 1 or end != -1:
        raise _unsupported(node, f"flatten(start_dim={start}, end_dim={end}) (only 1, -1)")
    return Flatten()


def reshape_method(node: fx.Node, ctx: ImportContext) -> Translation:
    """``x.view(x.size(0), -1)`` and ``x.reshape(-1, F)`` are flattens; nothing else is."""
    shape = node.args[1:]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    keeps_batch = len(shape) == 2 and (shape[0] == -1 or ctx.is_batch_size(shape[0]))
    if not keeps_batch or len(ctx.schema(node).shape) != 1:
        raise _unsupported(node, "reshape other than flattening each image to a vector")
    return Flatten(), (node.args[0],)


def mean_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = _bind(node, ("input", "dim", "keepdim"), dim=None, keepdim=False)
    dims = args["dim"]
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    if not all(isinstance(d, int) for d in dims) or sorted(d % 4 for d in dims) != [2, 3]:
        raise _unsupported(node, f"mean over dims {dims} (only the spatial dims 2 and 3)")
    return GlobalAvgPool(keepdim=bool(args["keepdim"])), (args["input"],)


def linear_module(node: fx.Node, ctx: ImportContext) -> Translation:
    m = ctx.module(node, nn.Linear)
    bias = ctx.weight(f"{node.target}.bias") if m.bias is not None else None
    return Linear(ctx.weight(f"{node.target}.weight"), bias), (node.args[0],)


def linear_function(node: fx.Node, ctx: ImportContext) -> Translation:
    args = _bind(node, ("input", "weight", "bias"), bias=None)
    bias = ctx.weight_of(node, args["bias"]) if args["bias"] is not None else None
    return Linear(ctx.weight_of(node, args["weight"]), bias), (args["input"],)


def _softmax(log: bool, from_module: bool) -> Translator:
    def translate(node: fx.Node, ctx: ImportContext) -> Translation:
        if from_module:
            dim = ctx.module(node, nn.Module).dim
        else:
            dim = _bind(node, ("input", "dim"), dim=None)["dim"]
        if len(ctx.schema(node).shape) != 1 or dim not in (1, -1):
            raise _unsupported(node, "softmax other than over the classes of [N, K] scores")
        return Softmax(log), (node.args[0],)

    return translate


# -- tables -----------------------------------------------------------------------------------

MODULES: dict[type[nn.Module], Translator] = {
    nn.Conv2d: conv2d_module,
    nn.MaxPool2d: max_pool2d_module,
    nn.AvgPool2d: avg_pool2d_module,
    nn.AdaptiveAvgPool2d: adaptive_avg_pool_module,
    nn.AdaptiveMaxPool2d: adaptive_max_pool_module,
    nn.BatchNorm2d: batch_norm_module,
    nn.ReLU: _activation_module(Activation.RELU),
    nn.ReLU6: _activation_module(Activation.RELU6),
    nn.Hardtanh: _activation_module(Activation.HARDTANH),
    nn.LeakyReLU: _activation_module(Activation.LEAKY_RELU),
    nn.SiLU: _activation_module(Activation.SILU),
    nn.Hardswish: _activation_module(Activation.HARDSWISH),
    nn.Hardsigmoid: _activation_module(Activation.HARDSIGMOID),
    nn.Sigmoid: _activation_module(Activation.SIGMOID),
    nn.Tanh: _activation_module(Activation.TANH),
    nn.GELU: _activation_module(Activation.GELU),
    nn.Dropout: identity,
    nn.Dropout2d: identity,
    nn.Identity: identity,
    nn.ZeroPad2d: pad_module,
    nn.ConstantPad2d: pad_module,
    nn.Flatten: flatten_module,
    nn.Linear: linear_module,
    nn.Softmax: _softmax(log=False, from_module=True),
    nn.LogSoftmax: _softmax(log=True, from_module=True),
}

FUNCTIONS: dict[Any, Translator] = {
    F.conv2d: conv2d_function,
    torch.conv2d: conv2d_function,
    F.max_pool2d: max_pool2d_function,
    torch.max_pool2d: max_pool2d_function,
    F.avg_pool2d: avg_pool2d_function,
    F.adaptive_avg_pool2d: adaptive_avg_pool_function,
    F.adaptive_max_pool2d: adaptive_max_pool_function,
    F.relu: _activation_function(Activation.RELU),
    torch.relu: _activation_function(Activation.RELU),
    F.relu6: _activation_function(Activation.RELU6),
    F.hardtanh: _activation_function(Activation.HARDTANH),
    F.leaky_relu: _activation_function(Activation.LEAKY_RELU),
    F.silu: _activation_function(Activation.SILU),
    F.hardswish: _activation_function(Activation.HARDSWISH),
    F.hardsigmoid: _activation_function(Activation.HARDSIGMOID),
    torch.sigmoid: _activation_function(Activation.SIGMOID),
    F.sigmoid: _activation_function(Activation.SIGMOID),
    torch.tanh: _activation_function(Activation.TANH),
    F.gelu: _activation_function(Activation.GELU),
    F.dropout: identity,
    F.dropout2d: identity,
    F.pad: pad_function,
    operator.add: _arithmetic(Arith.ADD),
    operator.iadd: _arithmetic(Arith.ADD),
    torch.add: _arithmetic(Arith.ADD),
    operator.sub: _arithmetic(Arith.SUB),
    operator.isub: _arithmetic(Arith.SUB),
    torch.sub: _arithmetic(Arith.SUB),
    operator.mul: _arithmetic(Arith.MUL),
    operator.imul: _arithmetic(Arith.MUL),
    torch.mul: _arithmetic(Arith.MUL),
    operator.truediv: _arithmetic(Arith.DIV),
    torch.div: _arithmetic(Arith.DIV),
    torch.cat: cat_function,
    torch.concat: cat_function,
    torch.flatten: flatten_function,
    torch.mean: mean_function,
    F.linear: linear_function,
    F.softmax: _softmax(log=False, from_module=False),
    torch.softmax: _softmax(log=False, from_module=False),
    F.log_softmax: _softmax(log=True, from_module=False),
}

METHODS: dict[str, Translator] = {
    "relu": _activation_function(Activation.RELU),
    "relu_": _activation_function(Activation.RELU),
    "sigmoid": _activation_function(Activation.SIGMOID),
    "tanh": _activation_function(Activation.TANH),
    "add": _arithmetic(Arith.ADD),
    "add_": _arithmetic(Arith.ADD),
    "sub": _arithmetic(Arith.SUB),
    "mul": _arithmetic(Arith.MUL),
    "mul_": _arithmetic(Arith.MUL),
    "div": _arithmetic(Arith.DIV),
    "flatten": flatten_function,
    "view": reshape_method,
    "reshape": reshape_method,
    "mean": mean_function,
    "softmax": _softmax(log=False, from_module=False),
    "contiguous": identity,
    "clone": identity,
    "detach": identity,
}
