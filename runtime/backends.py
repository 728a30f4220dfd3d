"""Backends: which implementation runs each physical operator.

``torch`` is the reference backend (every ``KernelId``). ``triton`` replaces the operators that
have a Triton kernel and keeps the reference for the rest; on CPU tensors its kernels run in
Triton's interpreter (for tests).
"""

from __future__ import annotations

import enum

from compiler.ir import JoinAggregate, Node
from compiler.physical import KernelId
from runtime.reference import KERNELS, Kernel
from runtime.values import Env, Patch, Value, read_origin


class Backend(enum.Enum):
    AUTO = "auto"  # triton on CUDA, torch on the CPU
    TORCH = "torch"
    TRITON = "triton"


def resolve(backend: Backend, device_type: str) -> Backend:
    if backend is Backend.AUTO:
        return Backend.TRITON if device_type == "cuda" else Backend.TORCH
    return backend


def triton_gather_conv2d(node: Node, inputs: list[Value], env: Env) -> Value:
    """``gather_conv2d`` as one fused Triton kernel: no window buffer is built."""
    from runtime.kernels.gather_conv2d import gather_conv2d

    op, (patch,) = node.op, inputs
    assert isinstance(op, JoinAggregate) and isinstance(patch, Patch)
    assert node.update is not None and node.update.box is not None
    y0, x0 = env.batch.origins[node.name]
    read_y, read_x = read_origin(node, (y0, x0))
    window, box = op.window, node.update.box
    values = gather_conv2d(
        env.views[node.inputs[0]],
        patch.values,
        env.batch.image,
        read_y,
        read_x,
        patch.y0,
        patch.x0,
        env.weights[op.weight],
        env.weights.get(op.bias),
        (window.stride.h, window.stride.w),
        (window.dilation.h, window.dilation.w),
        op.groups,
        (box.h, box.w),
    )
    return Patch(values, y0, x0)


TRITON_KERNELS: dict[KernelId, Kernel] = {KernelId.GATHER_CONV2D: triton_gather_conv2d}


def kernels_for(backend: Backend) -> dict[KernelId, Kernel]:
    """The kernel table of a (resolved) backend."""
    if backend is Backend.TRITON:
        return {**KERNELS, **TRITON_KERNELS}
    return dict(KERNELS)


def describe(backend: Backend) -> str:
    if backend is Backend.TRITON:
        names = ", ".join(k.value for k in TRITON_KERNELS)
        return f"triton ({names}); torch reference for the other operators"
    return "torch reference"
