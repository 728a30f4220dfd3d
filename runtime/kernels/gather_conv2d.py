"""Fused gather + implicit-GEMM convolution over per-query windows of ``view ⊕ patch``.

For query ``b`` with image ``img[b]``, read-in origin ``(ry[b], rx[b])`` and patch box at
``(py[b], px[b])`` of size ``PH×PW``::

    out[b, n, i, j] = bias[n] + Σ_{c, ky, kx} W[n, c, ky, kx] · A[b, g(n)·Cg + c,
                                                             ry[b] + i·Sy + ky·Dy,
                                                             rx[b] + j·Sx + kx·Dx]
    A[b, c, y, x] = patch[b, c, y − py[b], x − px[b]]   inside the patch box,
                    view[img[b], c, y, x]               elsewhere inside the map,
                    0                                   outside the map (zero padding).

The gather never materializes: each A-tile load reads the patch inside the box and the shared
view outside it. Products use tensor cores as torch's convolutions do — TF32 for fp32 when
``torch.backends.cudnn.allow_tf32`` (torch's default), native fp16/bf16 — with fp32
accumulation; exact IEEE fp32 in the interpreter or with TF32 switched off.
M = B·OH·OW output pixels (all queries' pixels, so tiles stay full even when each query's box
is small), N = output channels of a group, K = Cg·KH·KW. Twin:
``runtime.values.gather`` followed by ``F.conv2d`` with padding 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from compiler.ir import JoinAggregate, Node
from runtime.kernels import gather_pool2d
from runtime.kernels.cells import channels_last, in_box, load_cells, query_rows
from runtime.kernels.epilogue import IDENTITY, Epilogue, apply
from runtime.kernels.launch import Grid, run_kernel
from runtime.values import Env, Patch, Value, window_operands


def get_autotune_configs() -> list[triton.Config]:
    """Tile shapes (BLOCK_M output pixels × BLOCK_N channels × BLOCK_K reduction): each
    compiles without spills for sm_90 and sm_80 on every convolution of the benchmark models
    (``python -m benchmarks.compile_check``). A 32-deep reduction tile spilled on up to 30 of
    84 of them (64×64×32, 128×128×32: up to 780 B per thread) and was dropped."""
    shapes = [
        (128, 64, 16, 4),
        (64, 128, 16, 4),
        (128, 128, 16, 8),
        (64, 64, 16, 8),
        (128, 32, 16, 8),
        (32, 32, 16, 4),
    ]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=1)
        for m, n, k, w in shapes
    ]


CONFIGS = tuple(get_autotune_configs())

# The interpreter (CPU tensors) runs one small tile; autotuning there would only cost time.
INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}


@triton.jit
def gather_conv2d_kernel(
    # pointers
    view,
    patch,
    image,
    read_y,
    read_x,
    patch_y,
    patch_x,
    weight,
    bias,
    out,
    scale,
    shift,
    alpha,
    beta,
    # sizes
    M,
    H,
    W,
    PH,
    PW,
    OH,
    OW,
    CG,
    COG,
    KH,
    KW,
    # geometry
    SY,
    SX,
    DY,
    DX,
    # strides
    sv_n,
    sv_c,
    sv_h,
    sv_w,
    sp_b,
    sp_c,
    sp_h,
    sp_w,
    sw_n,
    sw_c,
    sw_h,
    sw_w,
    so_b,
    so_c,
    so_h,
    so_w,
    # meta-parameters
    HAS_BIAS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    ACT: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m, pid_n, group = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels of all queries
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels within the group
    row_ok, col_ok = rows < M, cols < COG
    b, i, j, img, base_y, base_x = query_rows(rows, row_ok, image, read_y, read_x, OH, OW, SY, SX)
    # Per row, once: the window's start in the map and in the query's patch.
    top = tl.load(patch_y + b, mask=row_ok, other=0).to(tl.int32)
    left = tl.load(patch_x + b, mask=row_ok, other=0).to(tl.int32)
    view_base = img * sv_n
    patch_base = b * sp_b
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_col = ((group * COG + cols) * sw_n)[None, :]
    for tap in range(0, KH * KW):
        # Per tap: the cell each row reads, whether it is in the map and in the query's box —
        # all per row; the tile adds only a channel offset.
        ky, kx = tap // KW, tap % KW
        y = base_y + ky * DY
        x = base_x + kx * DX
        row_in = row_ok & (y >= 0) & (y < H) & (x >= 0) & (x < W)
        inside = in_box(y, x, top, left, PH, PW)[:, None]
        view_row = (view_base + y * sv_h + x * sv_w)[:, None]
        patch_row = (patch_base + (y - top) * sp_h + (x - left) * sp_w)[:, None]
        for c0 in range(0, CG, BLOCK_K):
            c = c0 + tl.arange(0, BLOCK_K)
            c_ok = c < CG
            channel = (group * CG + c)[None, :]
            a = load_cells(
                view,
                patch,
                view_row + channel * sv_c,
                patch_row + channel * sp_c,
                inside,
                row_in[:, None] & c_ok[None, :],
            )
            w = tl.load(
                weight + (c * sw_c + ky * sw_h + kx * sw_w)[:, None] + w_col,
                mask=c_ok[:, None] & col_ok[None, :],
                other=0.0,
            )
            if IEEE:  # exact fp32 products (the interpreter, or TF32 switched off in torch)
                acc += tl.dot(a.to(tl.float32), w.to(tl.float32), input_precision="ieee")
            else:  # tensor cores: TF32 for fp32 inputs (torch's default for convolutions),
                acc += tl.dot(a, w.to(a.dtype))  # or native fp16/bf16, fp32 accumulation
    channel = group * COG + cols
    if HAS_BIAS:
        acc += tl.load(bias + channel, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc = apply(
        acc, channel[None, :], col_ok[None, :], scale, shift, alpha, beta, HAS_SCALE, HAS_SHIFT, ACT
    )
    out_row = b * so_b + i * so_h + j * so_w
    pointers = out + out_row[:, None] + (channel * so_c)[None, :]
    tl.store(pointers, acc.to(out.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


_autotuned = triton.autotune(configs=list(CONFIGS), key=["M", "COG", "CG", "KH", "KW"])(
    gather_conv2d_kernel
)


def gather_conv2d(
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
    groups: int,
    out_size: tuple[int, int],
    epilogue: Epilogue = IDENTITY,
) -> Tensor:
    """``epilogue(conv2d(Window(view ⊕ patch)))`` for every query, without building the
    windows.

    ``view`` is ``[N, C, H, W]``, ``patch`` ``[B, C, PH, PW]`` with per-query origins
    ``patch_y/x``; the windows start at ``read_y/x``; the result is ``[B, C_out, OH, OW]``.
    """
    assert view.dim() == 4 and patch.dim() == 4 and weight.dim() == 4
    queries, oh, ow = patch.shape[0], out_size[0], out_size[1]
    c_out, cg, kh, kw = weight.shape
    assert cg * groups == view.shape[1] and c_out % groups == 0
    if cg == 1:  # depthwise: a weighted sum pool, not a GEMM with a one-column tile
        return gather_pool2d.weighted_sum(
            view, patch, image, read_y, read_x, patch_y, patch_x, _taps_major(weight), bias,
            stride, dilation, out_size, epilogue,
        )  # fmt: skip
    out = channels_last(queries, c_out, oh, ow, device=patch.device, dtype=patch.dtype)
    weight = _taps_major(weight)
    m, cog = queries * oh * ow, c_out // groups
    metadata = [t.to(torch.int64).contiguous() for t in (image, read_y, read_x, patch_y, patch_x)]
    args = (
        view,
        patch,
        *metadata,
        weight,
        bias if bias is not None else weight,
        out,
        *epilogue.pointers(weight),
        m,
        view.shape[2],
        view.shape[3],
        patch.shape[2],
        patch.shape[3],
        oh,
        ow,
        cg,
        cog,
        kh,
        kw,
        stride[0],
        stride[1],
        dilation[0],
        dilation[1],
        *view.stride(),
        *patch.stride(),
        *weight.stride(),
        *out.stride(),
    )

    on_cpu = patch.device.type == "cpu"
    tf32 = patch.dtype != torch.float32 or torch.backends.cudnn.allow_tf32
    flags = {"HAS_BIAS": bias is not None, "IEEE": on_cpu or not tf32, **epilogue.flags()}
    grid = programs(m, cog, groups)
    run_kernel(
        gather_conv2d_kernel, _autotuned, grid, args, flags, INTERPRETER_CONFIG, patch.device
    )
    return out


def programs(rows: int, columns: int, groups: int) -> Grid:
    """The grid over ``rows`` output pixels × ``columns`` output channels per group × groups."""
    return lambda meta: (
        triton.cdiv(rows, meta["BLOCK_M"]),
        triton.cdiv(columns, meta["BLOCK_N"]),
        groups,
    )


def _taps_major(weight: Tensor) -> Tensor:
    """The weight ``[C_out, Cg, KH, KW]`` viewed through a ``[KH, KW, Cg, C_out]``-contiguous
    copy (same indices, strides changed): a tile's output channels are contiguous."""
    if weight.stride(0) == 1:
        return weight
    return weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)


def _cached_taps_major(env: Env, name: str, weight: Tensor) -> Tensor:
    key = f"{name}:taps-major"
    if key not in env.cache:
        env.cache[key] = _taps_major(weight)
    return env.cache[key]


def launch(node: Node, inputs: list[Value], env: Env, epilogue: Epilogue = IDENTITY) -> Patch:
    """A boxed convolution step (``KernelId.GATHER_CONV``) with its folded epilogue."""
    op = node.op
    assert isinstance(op, JoinAggregate)
    patch, (y0, x0), (read_y, read_x), box = window_operands(node, inputs, env)
    window = op.window
    values = gather_conv2d(
        env.views[node.inputs[0]],
        patch.values,
        env.batch.image,
        read_y,
        read_x,
        patch.y0,
        patch.x0,
        _cached_taps_major(env, op.weight.path, env.weights[op.weight]),
        env.weights.get(op.bias),
        (window.stride.h, window.stride.w),
        (window.dilation.h, window.dilation.w),
        op.groups,
        (box.h, box.w),
        epilogue,
    )
    return Patch(values, y0, x0)
