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
from runtime.kernels.launch import Grid, run_kernel
from runtime.values import Env, Patch, Value


def get_autotune_configs() -> list[triton.Config]:
    """Elements per program of a memory-bound map."""
    return [
        triton.Config({"BLOCK": block}, num_warps=w)
        for block, w in ((256, 2), (1024, 4), (4096, 8))
    ]


CONFIGS = tuple(get_autotune_configs())

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
    so_b,
    so_c,
    so_h,
    so_w,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    ACT: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # the tensors' memory order
    ok = index < N
    if CHANNELS_LAST:  # [B, H, W, C] order
        channel = index % C
        j = (index // C) % W
        i = (index // (C * W)) % H
    else:  # [B, C, H, W] order
        j = index % W
        i = (index // W) % H
        channel = (index // (W * H)) % C
    b = (index // (C * H * W)).to(tl.int64)
    offset = b * sx_b + channel * sx_c + i * sx_h + j * sx_w
    value = tl.load(x + offset, mask=ok, other=0.0)
    value = apply(
        value.to(tl.float32), channel, ok, scale, shift, alpha, beta, HAS_SCALE, HAS_SHIFT, ACT
    )
    offset = b * so_b + channel * so_c + i * so_h + j * so_w
    tl.store(out + offset, value.to(out.dtype.element_ty), mask=ok)


_autotuned = triton.autotune(configs=list(CONFIGS), key=["N", "C"])(elementwise_kernel)


def elementwise(x: Tensor, epilogue: Epilogue) -> Tensor:
    """``epilogue(x)`` for ``x`` ``[B, C, H, W]``, in ``x``'s memory format."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=layout)
    count = x.numel()
    args = (x, out, *epilogue.pointers(x), count, *x.shape[1:], *x.stride(), *out.stride())

    flags = {**epilogue.flags(), "CHANNELS_LAST": channels_last}
    grid = programs(count)
    run_kernel(elementwise_kernel, _autotuned, grid, args, flags, INTERPRETER_CONFIG, x.device)
    return out


def programs(count: int) -> Grid:
    """The grid over ``count`` values."""
    return lambda meta: (triton.cdiv(count, meta["BLOCK"]),)


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
