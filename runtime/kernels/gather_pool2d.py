"""Fused gather + pooling over per-query windows of ``view ⊕ patch``, with an element-wise
epilogue — and the depthwise convolution, which is a weighted sum pool.

Rows of a tile are output pixels of all queries (``M = B·OH·OW``), columns are channels; each
tap of the ``KH×KW`` window reads the patch inside the query's box and the shared view outside
it. Taps outside the map are padding: skipped by a max, zero in a sum. An average divides by a
constant or by a per-output divisor map (PyTorch's border rule), read at the output's position
in the map. Twin: ``runtime.reference.gather_pool``.

A convolution with one input channel per group (depthwise, with channel multiplier ``R``)::

    out[b, n, i, j] = bias[n] + Σ_{ky, kx} W[n, 0, ky, kx] · A[b, n // R, ry[b] + i·Sy + ky·Dy,
                                                                   rx[b] + j·Sx + kx·Dx]

is the same loop with a per-channel, per-tap weight (``weighted_sum``): no GEMM — as one, its
reduction would be ``KH·KW`` long and its tensor-core tiles one column wide. Twin:
``runtime.values.gather`` followed by ``F.conv2d`` with ``groups = C``.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from compiler.ir import Node, Pool
from compiler.types import Agg
from runtime import reference
from runtime.kernels.cells import channels_last, in_box, load_cells, query_rows
from runtime.kernels.epilogue import IDENTITY, Epilogue, apply
from runtime.kernels.launch import Grid, run_kernel
from runtime.values import Env, Patch, Value, window_operands


def get_autotune_configs() -> list[triton.Config]:
    """Tile shapes (BLOCK_M output pixels × BLOCK_C channels)."""
    shapes = [(32, 32, 4), (64, 32, 4), (16, 64, 4), (128, 16, 4), (32, 128, 8)]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_C": c}, num_warps=w, num_stages=1) for m, c, w in shapes
    ]


CONFIGS = tuple(get_autotune_configs())

INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_C": 8}


@triton.jit
def gather_pool2d_kernel(
    view,
    patch,
    image,
    read_y,
    read_x,
    patch_y,
    patch_x,
    out_y,
    out_x,
    divisor,
    weight,
    bias,
    out,
    scale,
    shift,
    alpha,
    beta,
    M,
    C,
    H,
    W,
    PH,
    PW,
    OH,
    OW,
    KH,
    KW,
    SY,
    SX,
    DY,
    DX,
    DIVISOR_WIDTH,
    constant_divisor,
    sv_n,
    sv_c,
    sv_h,
    sv_w,
    sp_b,
    sp_c,
    sp_h,
    sp_w,
    sw_n,
    sw_h,
    sw_w,
    so_b,
    so_c,
    so_h,
    so_w,
    IS_MAX: tl.constexpr,
    DIVISOR_MAP: tl.constexpr,
    WEIGHTED: tl.constexpr,
    MULTIPLIER: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok, col_ok = rows < M, channel < C
    b, i, j, img, base_y, base_x = query_rows(rows, row_ok, image, read_y, read_x, OH, OW, SY, SX)
    top = tl.load(patch_y + b, mask=row_ok, other=0).to(tl.int32)
    left = tl.load(patch_x + b, mask=row_ok, other=0).to(tl.int32)
    source = channel // MULTIPLIER  # the input channel an output channel reads
    view_col, patch_col = (source * sv_c)[None, :], (source * sp_c)[None, :]
    if IS_MAX:
        acc = tl.full((BLOCK_M, BLOCK_C), float("-inf"), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for tap in range(0, KH * KW):  # the tap's cell depends on the row only
        ky, kx = tap // KW, tap % KW
        y = base_y + ky * DY
        x = base_x + kx * DX
        valid = row_ok & (y >= 0) & (y < H) & (x >= 0) & (x < W)
        both = valid[:, None] & col_ok[None, :]
        view_row = img * sv_n + y * sv_h + x * sv_w
        patch_row = b * sp_b + (y - top) * sp_h + (x - left) * sp_w
        inside = in_box(y, x, top, left, PH, PW)[:, None]
        value = load_cells(
            view, patch, view_row[:, None] + view_col, patch_row[:, None] + patch_col, inside, both
        ).to(tl.float32)
        if IS_MAX:
            acc = tl.where(both, tl.maximum(acc, value), acc)
        elif WEIGHTED:  # padding reads 0, so it adds nothing
            w = tl.load(weight + channel * sw_n + ky * sw_h + kx * sw_w, mask=col_ok, other=0.0)
            acc += value * w.to(tl.float32)[None, :]
        else:
            acc += tl.where(both, value, 0.0)
    if WEIGHTED:
        if HAS_BIAS:
            acc += tl.load(bias + channel, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    elif not IS_MAX:
        if DIVISOR_MAP:
            oy = tl.load(out_y + b, mask=row_ok, other=0) + i
            ox = tl.load(out_x + b, mask=row_ok, other=0) + j
            count = tl.load(divisor + oy * DIVISOR_WIDTH + ox, mask=row_ok, other=1.0)
            acc = acc / count.to(tl.float32)[:, None]
        else:
            acc = acc / constant_divisor
    acc = apply(
        acc, channel[None, :], col_ok[None, :], scale, shift, alpha, beta, HAS_SCALE, HAS_SHIFT, ACT
    )
    pointers = out + (b * so_b + i * so_h + j * so_w)[:, None] + (channel * so_c)[None, :]
    tl.store(pointers, acc.to(out.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


_autotuned = triton.autotune(configs=list(CONFIGS), key=["M", "C", "KH", "KW"])(
    gather_pool2d_kernel
)


def gather_pool2d(
    view: Tensor,
    patch: Tensor,
    image: Tensor,
    read_y: Tensor,
    read_x: Tensor,
    patch_y: Tensor,
    patch_x: Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_size: tuple[int, int],
    *,
    is_max: bool,
    divisor: float | tuple[Tensor, Tensor, Tensor] = 1.0,
    epilogue: Epilogue = IDENTITY,
) -> Tensor:
    """``epilogue(pool(Window(view ⊕ patch)))`` for every query ``[B, C, OH, OW]``.

    ``divisor`` of an average: a constant, or ``(map, out_y, out_x)`` — the per-output divisor
    map ``[OH_map, OW_map]`` and each query's output origin in it.
    """
    metadata = [t.to(torch.int64).contiguous() for t in (image, read_y, read_x, patch_y, patch_x)]
    if isinstance(divisor, tuple):
        counts, out_y, out_x = divisor
        origins = (out_y.to(torch.int64).contiguous(), out_x.to(torch.int64).contiguous())
        counts = counts.to(torch.float32).contiguous()
        averaging = (*origins, counts, counts.shape[-1], 1.0)
    else:
        averaging = (metadata[1], metadata[2], patch, 1, float(divisor))
    flags = {"IS_MAX": is_max, "DIVISOR_MAP": isinstance(divisor, tuple)}
    window = (kernel, stride, dilation, out_size)
    return _run(view, patch, metadata, window, epilogue, flags, averaging)


def weighted_sum(
    view: Tensor,
    patch: Tensor,
    image: Tensor,
    read_y: Tensor,
    read_x: Tensor,
    patch_y: Tensor,
    patch_x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_size: tuple[int, int],
    epilogue: Epilogue = IDENTITY,
) -> Tensor:
    """``epilogue(conv2d(Window(view ⊕ patch)))`` for a convolution with one input channel per
    group (``weight`` ``[C·R, 1, KH, KW]``, ``groups = C``): ``[B, C·R, OH, OW]``."""
    c_out, cg, kh, kw = weight.shape
    channels = view.shape[1]
    assert cg == 1 and c_out % channels == 0
    metadata = [t.to(torch.int64).contiguous() for t in (image, read_y, read_x, patch_y, patch_x)]
    sw_n, _, sw_h, sw_w = weight.stride()
    weights = (weight, bias if bias is not None else weight, sw_n, sw_h, sw_w)
    flags = {"WEIGHTED": True, "MULTIPLIER": c_out // channels, "HAS_BIAS": bias is not None}
    averaging = (metadata[1], metadata[2], patch, 1, 1.0)
    window = ((kh, kw), stride, dilation, out_size)
    return _run(view, patch, metadata, window, epilogue, flags, averaging, weights, c_out)


def _run(
    view: Tensor,
    patch: Tensor,
    metadata: list[Tensor],
    window: tuple[tuple[int, int], ...],
    epilogue: Epilogue,
    flags: dict[str, Any],
    averaging: tuple[Any, ...],
    weights: tuple[Any, ...] | None = None,
    channels: int | None = None,
) -> Tensor:
    """Launch the kernel over ``window = (kernel, stride, dilation, out_size)``.

    ``averaging`` is ``(out_y, out_x, divisor map, its width, constant divisor)``; ``weights``
    ``(weight, bias, sw_n, sw_h, sw_w)`` of a weighted sum (``channels`` its output channels).
    """
    kernel, stride, dilation, (oh, ow) = window
    queries = patch.shape[0]
    channels = patch.shape[1] if channels is None else channels
    out = channels_last(queries, channels, oh, ow, device=patch.device, dtype=patch.dtype)
    m = queries * oh * ow
    *origins, counts, width, constant = averaging
    weight, bias, *weight_strides = weights if weights is not None else (patch, patch, 0, 0, 0)
    args = (
        view,
        patch,
        *metadata,
        *origins,
        counts,
        weight,
        bias,
        out,
        *epilogue.pointers(patch),
        m,
        channels,
        view.shape[2],
        view.shape[3],
        patch.shape[2],
        patch.shape[3],
        oh,
        ow,
        *kernel,
        *stride,
        *dilation,
        width,
        constant,
        *view.stride(),
        *patch.stride(),
        *weight_strides,
        *out.stride(),
    )
    flags = {
        "IS_MAX": False,
        "DIVISOR_MAP": False,
        "WEIGHTED": False,
        "MULTIPLIER": 1,
        "HAS_BIAS": False,
        **flags,
        **epilogue.flags(),
    }

    grid = programs(m, channels)
    run_kernel(
        gather_pool2d_kernel, _autotuned, grid, args, flags, INTERPRETER_CONFIG, patch.device
    )
    return out


def programs(rows: int, channels: int) -> Grid:
    """The grid over ``rows`` output cells × ``channels``."""
    return lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(channels, meta["BLOCK_C"]))


def launch(node: Node, inputs: list[Value], env: Env, epilogue: Epilogue = IDENTITY) -> Patch:
    """A boxed pooling step (``KernelId.GATHER_POOL``) with its folded epilogue; an average
    whose divisor varies (padding not counted) reads the reference's divisor map."""
    op = node.op
    assert isinstance(op, Pool)
    patch, (y0, x0), (read_y, read_x), box = window_operands(node, inputs, env)
    window = op.window
    divisor: float | tuple[Tensor, Tensor, Tensor] = float(window.kernel.area)
    if op.divisor_override is not None:
        divisor = float(op.divisor_override)
    elif op.agg is Agg.AVG and op.constant_divisor is None:
        divisor = (reference.divisor_map(node, env)[0, 0], y0, x0)
    values = gather_pool2d(
        env.views[node.inputs[0]],
        patch.values,
        env.batch.image,
        read_y,
        read_x,
        patch.y0,
        patch.x0,
        (window.kernel.h, window.kernel.w),
        (window.stride.h, window.stride.w),
        (window.dilation.h, window.dilation.w),
        (box.h, box.w),
        is_max=op.agg is Agg.MAX,
        divisor=divisor,
        epilogue=epilogue,
    )
    return Patch(values, y0, x0)
