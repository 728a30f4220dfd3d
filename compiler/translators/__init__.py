"""One small translator per ATen operator (or family): exported node -> IR node(s).

``ATEN`` maps an operator's name (``conv2d`` for ``aten.conv2d.padding``) to its translator.
In-place variants (``relu_``) are translated as their functional form by the importer. An
operator with no entry, or whose translator raises ``NotLocal``, runs as the exact fallback
(``compiler.ir.Aten``). The table is a plain dict built once at import.
"""

from __future__ import annotations

from compiler.ir import Activation, Arith
from compiler.translators.channels import (
    cat,
    layer_norm,
    linear,
    permute,
    reduce_channels,
    reshape,
    select,
    slice_,
    softmax,
    split,
    stack,
)
from compiler.translators.common import (
    NotLocal,
    Outputs,
    Translation,
    Translator,
    Value,
    bind,
    op_name,
    unsupported,
)
from compiler.translators.elementwise import (
    activation,
    arithmetic,
    dropout,
    generic,
    identity,
    rsub,
    to_dtype,
)
from compiler.translators.local import (
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool2d,
    batch_norm,
    batch_norm_no_training,
    conv2d,
    max_pool2d,
    max_pool2d_with_indices,
    mean,
    pad,
    upsample_bilinear,
    upsample_nearest,
)

__all__ = [
    "ATEN",
    "NotLocal",
    "Outputs",
    "Translation",
    "Translator",
    "Value",
    "bind",
    "generic",
    "op_name",
    "unsupported",
]

ATEN: dict[str, Translator] = {
    # windows
    "conv2d": conv2d,
    "convolution": conv2d,
    "max_pool2d": max_pool2d,
    "max_pool2d_with_indices": max_pool2d_with_indices,
    "avg_pool2d": avg_pool2d,
    "adaptive_avg_pool2d": adaptive_avg_pool2d,
    "_adaptive_avg_pool2d": adaptive_avg_pool2d,
    "adaptive_max_pool2d": adaptive_max_pool2d,
    "batch_norm": batch_norm,
    "_native_batch_norm_legit_no_training": batch_norm_no_training,
    "pad": pad,
    "constant_pad_nd": pad,
    "mean": mean,
    "upsample_nearest2d": upsample_nearest,
    "upsample_bilinear2d": upsample_bilinear,
    # element-wise
    "relu": activation(Activation.RELU),
    "relu6": activation(Activation.RELU6),
    "hardtanh": activation(Activation.HARDTANH),
    "leaky_relu": activation(Activation.LEAKY_RELU),
    "silu": activation(Activation.SILU),
    "hardswish": activation(Activation.HARDSWISH),
    "hardsigmoid": activation(Activation.HARDSIGMOID),
    "sigmoid": activation(Activation.SIGMOID),
    "tanh": activation(Activation.TANH),
    "gelu": activation(Activation.GELU),
    "add": arithmetic(Arith.ADD),
    "sub": arithmetic(Arith.SUB),
    "mul": arithmetic(Arith.MUL),
    "div": arithmetic(Arith.DIV),
    "rsub": rsub,
    "dropout": dropout,
    "feature_dropout": dropout,
    "alpha_dropout": dropout,
    "feature_alpha_dropout": dropout,
    "alias": identity,
    "contiguous": identity,
    "clone": identity,
    "detach": identity,
    "lift_fresh_copy": identity,
    "to": to_dtype,
    "_to_copy": to_dtype,
    "type_as": to_dtype,
    # layout
    "view": reshape,
    "reshape": reshape,
    "_unsafe_view": reshape,
    "view_as": reshape,
    "reshape_as": reshape,
    "flatten": reshape,
    "unflatten": reshape,
    "squeeze": reshape,
    "unsqueeze": reshape,
    "permute": permute,
    "transpose": permute,
    # per position, on channels
    "slice": slice_,
    "narrow": slice_,
    "select": select,
    "split": split,
    "split_with_sizes": split,
    "chunk": split,
    "unbind": split,
    "layer_norm": layer_norm,
    "linear": linear,
    "softmax": softmax(log=False),
    "_softmax": softmax(log=False),
    "log_softmax": softmax(log=True),
    "_log_softmax": softmax(log=True),
    "sum": reduce_channels,
    "amax": reduce_channels,
    "cat": cat,
    "concat": cat,
    "stack": stack,
}
