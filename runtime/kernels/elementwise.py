"""An element-wise epilogue on its own: ``act(x·scale[c] + shift[c])`` over a per-query box
tensor of any strides, written contiguous. Twin: ``runtime.reference.elementwise`` applied node
by node."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from compiler.ir import Node
from compiler.physical import KernelId
from runtime import reference
from runtime.kernels.epilogue import IDENTITY, Epilogue, apply
from runtime.kernels.launch import run_kernel
from runtime.values import Env, Patch, Value


def get_autotune_configs() -> list[triton.Config]:
    """Elements per program of a memory-bound map."""
    return [
        triton.Config({"BLOCK": block}, num_warps=w)
        for block, w in ((256, 2), (1024, 4), (4096, 8))
    ]


INTERPRETER_CONFIG = {"BLOCK": 64}


@triton.jit
def elementwise_kernel(
    x,
    out,
    scale,
    shift,
    alpha,
    beta,
    N,
    C,
    H,
    W,
    sx_b,
    sx_c,
    sx_h,
    sx_w,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # contiguous [B, C, H, W] order
    ok = index < N
    j = index % W
    i = (index // W) % H
    channel = (index // (W * H)) % C
    b = index // (W * H * C)
    value = tl.load(x + b * sx_b + channel * sx_c + i * sx_h + j * sx_w, mask=ok, other=0.0)
    value = apply(
        value.to(tl.float32), channel, ok, scale, shift, alpha, beta, HAS_SCALE, HAS_SHIFT, ACT
    )
    tl.store(out + index, value.to(out.dtype.element_ty), mask=ok)


_autotuned = triton.autotune(configs=get_autotune_configs(), key=["N", "C"])(elementwise_kernel)


def elementwise(x: Tensor, epilogue: Epilogue) -> Tensor:
    """``epilogue(x)`` for ``x`` ``[B, C, H, W]``."""
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    count = x.numel()
    args = (x, out, *epilogue.pointers(x), count, *x.shape[1:], *x.stride())

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(count, meta["BLOCK"]),)

    run_kernel(
        elementwise_kernel, _autotuned, grid, args, epilogue.flags(), INTERPRETER_CONFIG, x.device
    )
    return out


def launch(node: Node, inputs: list[Value], env: Env, epilogue: Epilogue = IDENTITY) -> Value:
    """An element-wise step (``KernelId.ELEMENTWISE``): its own node is the first node of the
    folded ``epilogue`` (``IDENTITY`` when it does not fold: the backend applies it after)."""
    return apply_segment(epilogue, inputs[0], env)


def apply_segment(segment: Epilogue | Node, value: Value, env: Env) -> Value:
    """One epilogue segment on a boxed value: a folded ``Epilogue`` in this kernel, or an
    element-wise node no kernel folds by the reference."""
    if segment is IDENTITY:
        return value
    assert isinstance(value, Patch)
    if isinstance(segment, Epilogue):
        return Patch(elementwise(value.values, segment), value.y0, value.x0)
    return reference.KERNELS[KernelId.ELEMENTWISE](segment, [value], env)
