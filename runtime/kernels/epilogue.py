"""Element-wise epilogues: a chain of batch norms, scalar arithmetic and one activation, folded
into ``act(x·scale[c] + shift[c])`` and applied by a kernel before it stores its tile.

``fold`` turns a step's element-wise nodes into segments: each ``Epilogue`` is what one kernel
applies; a node no epilogue can express (an activation after an activation, ``value / x``)
stays a plain node and runs on the reference. ``apply`` is the ``@triton.jit`` half, called by
every kernel in this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from compiler.ir import Activation, Arith, BatchNorm, Map, Node, Scalar
from runtime.weights import Weights

# The activation codes ``apply`` understands, in its branch order.
ACTIVATION_CODES: dict[Activation, int] = {
    fn: code
    for code, fn in enumerate(
        [
            Activation.IDENTITY,
            Activation.RELU,
            Activation.RELU6,
            Activation.HARDTANH,
            Activation.LEAKY_RELU,
            Activation.SILU,
            Activation.HARDSWISH,
            Activation.HARDSIGMOID,
            Activation.SIGMOID,
            Activation.TANH,
        ]
    )
}


@dataclass(frozen=True)
class Epilogue:
    """``act(x·scale + shift)`` per channel; ``scale``/``shift`` are fp32 ``[C]`` or None."""

    scale: Tensor | None = None
    shift: Tensor | None = None
    act: int = 0
    alpha: float = 0.0
    beta: float = 0.0

    def pointers(self, fallback: Tensor) -> tuple[Any, ...]:
        """The kernel's ``scale, shift, alpha, beta`` arguments (``fallback`` stands in for an
        absent vector, which the kernel never reads)."""
        scale = self.scale if self.scale is not None else fallback
        shift = self.shift if self.shift is not None else fallback
        return scale, shift, self.alpha, self.beta

    def flags(self) -> dict[str, int | bool]:
        """The kernel's compile-time epilogue switches."""
        return {
            "HAS_SCALE": self.scale is not None,
            "HAS_SHIFT": self.shift is not None,
            "ACT": self.act,
        }

    def slice(self, start: int, stop: int) -> Epilogue:
        """The epilogue of channels ``start:stop`` (for one operand of a concatenation)."""
        return Epilogue(
            None if self.scale is None else self.scale[start:stop],
            None if self.shift is None else self.shift[start:stop],
            self.act,
            self.alpha,
            self.beta,
        )


IDENTITY = Epilogue()


def fold(
    nodes: tuple[Node, ...], weights: Weights, channels: int, device: torch.device
) -> list[Epilogue | Node]:
    """Segments of a chain of element-wise nodes: affine maps fold together, an activation
    closes a segment; nodes no segment can express are returned as themselves."""
    segments: list[Epilogue | Node] = []
    affine: tuple[Tensor, Tensor] | None = None  # x·a + c so far, float64

    def close(act: int = 0, alpha: float = 0.0, beta: float = 0.0) -> None:
        nonlocal affine
        if affine is not None or act:
            scale, shift = affine if affine is not None else (None, None)
            segments.append(Epilogue(_f32(scale), _f32(shift), act, alpha, beta))
        affine = None

    for node in nodes:
        step = _affine(node, weights, channels, device)
        if step is not None:
            a, c = step
            affine = (a, c) if affine is None else (affine[0] * a, affine[1] * a + c)
        elif isinstance(node.op, Map) and node.op.fn in ACTIVATION_CODES:
            close(ACTIVATION_CODES[node.op.fn], node.op.alpha, node.op.beta)
        else:
            close()
            segments.append(node)
    close()
    return segments


def _affine(
    node: Node, weights: Weights, channels: int, device: torch.device
) -> tuple[Tensor, Tensor] | None:
    """``(a, c)`` per channel with ``f(x) = x·a + c``, in float64; None if ``f`` is not affine."""
    op = node.op
    if isinstance(op, BatchNorm):
        a = torch.rsqrt(weights[op.var].double() + op.eps)
        if op.weight is not None:
            a = a * weights[op.weight].double()
        c = -weights[op.mean].double() * a
        if op.bias is not None:
            c = c + weights[op.bias].double()
        return a, c
    if isinstance(op, Scalar) and op.arith is not Arith.RDIV:
        ones = torch.ones(channels, dtype=torch.float64, device=device)
        zeros, value = 0 * ones, op.value * ones
        return {
            Arith.ADD: (ones, value),
            Arith.SUB: (ones, -value),
            Arith.RSUB: (-ones, value),
            Arith.MUL: (value, zeros),
            Arith.DIV: (1 / value, zeros),
        }[op.arith]
    return None


def _f32(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.to(torch.float32).contiguous()


@triton.jit
def apply(
    x,
    channel,
    mask,
    scale,
    shift,
    alpha,
    beta,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    ACT: tl.constexpr,
):
    """``act(x·scale[channel] + shift[channel])`` on an fp32 tile."""
    if HAS_SCALE:
        x = x * tl.load(scale + channel, mask=mask, other=1.0)
    if HAS_SHIFT:
        x = x + tl.load(shift + channel, mask=mask, other=0.0)
    if ACT == 1:  # relu
        x = tl.maximum(x, 0.0)
    elif ACT == 2:  # relu6
        x = tl.minimum(tl.maximum(x, 0.0), 6.0)
    elif ACT == 3:  # hardtanh(alpha, beta)
        x = tl.minimum(tl.maximum(x, alpha), beta)
    elif ACT == 4:  # leaky_relu(alpha)
        x = tl.where(x >= 0.0, x, x * alpha)
    elif ACT == 5:  # silu
        x = x / (1.0 + tl.exp(-x))
    elif ACT == 6:  # hardswish
        x = x * tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0
    elif ACT == 7:  # hardsigmoid
        x = tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0
    elif ACT == 8:  # sigmoid
        x = 1.0 / (1.0 + tl.exp(-x))
    elif ACT == 9:  # tanh
        x = 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0
    return x
