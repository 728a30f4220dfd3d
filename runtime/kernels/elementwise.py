"""An element-wise epilogue on its own: ``act(x·scale[c] + shift[c])`` over a per-query box
tensor of any strides, written contiguous. Twin: ``runtime.reference.elementwise`` applied node
by node."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from runtime.kernels.epilogue import Epilogue, apply

BLOCK = 1024  # elements per program: a memory-bound map, one vector per thread
INTERPRETER_BLOCK = 64


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


def elementwise(x: Tensor, epilogue: Epilogue) -> Tensor:
    """``epilogue(x)`` for ``x`` ``[B, C, H, W]``."""
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    count = x.numel()
    block = INTERPRETER_BLOCK if x.device.type == "cpu" else BLOCK
    elementwise_kernel[(triton.cdiv(count, block),)](
        x,
        out,
        *epilogue.pointers(x),
        count,
        *x.shape[1:],
        *x.stride(),
        **epilogue.flags(),
        BLOCK=block,
    )
    return out
