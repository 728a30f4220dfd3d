"""One small translator per torch module, function or method: fx node -> IR operator.

A translator receives the fx node and the ``ImportContext`` and returns the operator and the fx
nodes it reads. The tables below map torch targets to translators; they are plain dicts built
once at import, not registries that code elsewhere mutates.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.ops
from torch import nn

from compiler.ir import Activation, Arith
from compiler.translators.common import Translator, target_name
from compiler.translators.elementwise import (
    activation_function,
    activation_module,
    arithmetic,
    batch_norm_module,
    identity,
    pad_function,
    pad_module,
    stochastic_depth,
)
from compiler.translators.global_ops import (
    cat_function,
    flatten_function,
    flatten_module,
    linear_function,
    linear_module,
    mean_function,
    reshape_method,
    softmax,
)
from compiler.translators.local import (
    adaptive_avg_pool_function,
    adaptive_avg_pool_module,
    adaptive_max_pool_function,
    adaptive_max_pool_module,
    avg_pool2d_function,
    avg_pool2d_module,
    conv2d_function,
    conv2d_module,
    max_pool2d_function,
    max_pool2d_module,
)

__all__ = ["FUNCTIONS", "METHODS", "MODULES", "Translator", "target_name"]

MODULES: dict[type[nn.Module], Translator] = {
    nn.Conv2d: conv2d_module,
    nn.MaxPool2d: max_pool2d_module,
    nn.AvgPool2d: avg_pool2d_module,
    nn.AdaptiveAvgPool2d: adaptive_avg_pool_module,
    nn.AdaptiveMaxPool2d: adaptive_max_pool_module,
    nn.BatchNorm2d: batch_norm_module,
    nn.ReLU: activation_module(Activation.RELU),
    nn.ReLU6: activation_module(Activation.RELU6),
    nn.Hardtanh: activation_module(Activation.HARDTANH),
    nn.LeakyReLU: activation_module(Activation.LEAKY_RELU),
    nn.SiLU: activation_module(Activation.SILU),
    nn.Hardswish: activation_module(Activation.HARDSWISH),
    nn.Hardsigmoid: activation_module(Activation.HARDSIGMOID),
    nn.Sigmoid: activation_module(Activation.SIGMOID),
    nn.Tanh: activation_module(Activation.TANH),
    nn.GELU: activation_module(Activation.GELU),
    nn.Dropout: identity,
    nn.Dropout2d: identity,
    nn.Identity: identity,
    nn.ZeroPad2d: pad_module,
    nn.ConstantPad2d: pad_module,
    nn.Flatten: flatten_module,
    nn.Linear: linear_module,
    nn.Softmax: softmax(log=False, from_module=True),
    nn.LogSoftmax: softmax(log=True, from_module=True),
}

FUNCTIONS: dict[Any, Translator] = {
    F.conv2d: conv2d_function,
    torch.conv2d: conv2d_function,
    F.max_pool2d: max_pool2d_function,
    torch.max_pool2d: max_pool2d_function,
    F.avg_pool2d: avg_pool2d_function,
    F.adaptive_avg_pool2d: adaptive_avg_pool_function,
    F.adaptive_max_pool2d: adaptive_max_pool_function,
    F.relu: activation_function(Activation.RELU),
    torch.relu: activation_function(Activation.RELU),
    F.relu6: activation_function(Activation.RELU6),
    F.hardtanh: activation_function(Activation.HARDTANH),
    F.leaky_relu: activation_function(Activation.LEAKY_RELU),
    F.silu: activation_function(Activation.SILU),
    F.hardswish: activation_function(Activation.HARDSWISH),
    F.hardsigmoid: activation_function(Activation.HARDSIGMOID),
    torch.sigmoid: activation_function(Activation.SIGMOID),
    F.sigmoid: activation_function(Activation.SIGMOID),
    torch.tanh: activation_function(Activation.TANH),
    F.gelu: activation_function(Activation.GELU),
    F.dropout: identity,
    F.dropout2d: identity,
    torchvision.ops.stochastic_depth: stochastic_depth,
    F.pad: pad_function,
    operator.add: arithmetic(Arith.ADD),
    operator.iadd: arithmetic(Arith.ADD),
    torch.add: arithmetic(Arith.ADD),
    operator.sub: arithmetic(Arith.SUB),
    operator.isub: arithmetic(Arith.SUB),
    torch.sub: arithmetic(Arith.SUB),
    operator.mul: arithmetic(Arith.MUL),
    operator.imul: arithmetic(Arith.MUL),
    torch.mul: arithmetic(Arith.MUL),
    operator.truediv: arithmetic(Arith.DIV),
    torch.div: arithmetic(Arith.DIV),
    torch.cat: cat_function,
    torch.concat: cat_function,
    torch.flatten: flatten_function,
    torch.mean: mean_function,
    F.linear: linear_function,
    F.softmax: softmax(log=False, from_module=False),
    torch.softmax: softmax(log=False, from_module=False),
    F.log_softmax: softmax(log=True, from_module=False),
}

METHODS: dict[str, Translator] = {
    "relu": activation_function(Activation.RELU),
    "relu_": activation_function(Activation.RELU),
    "sigmoid": activation_function(Activation.SIGMOID),
    "tanh": activation_function(Activation.TANH),
    "add": arithmetic(Arith.ADD),
    "add_": arithmetic(Arith.ADD),
    "sub": arithmetic(Arith.SUB),
    "mul": arithmetic(Arith.MUL),
    "mul_": arithmetic(Arith.MUL),
    "div": arithmetic(Arith.DIV),
    "flatten": flatten_function,
    "view": reshape_method,
    "reshape": reshape_method,
    "mean": mean_function,
    "softmax": softmax(log=False, from_module=False),
    "contiguous": identity,
    "clone": identity,
    "detach": identity,
}
