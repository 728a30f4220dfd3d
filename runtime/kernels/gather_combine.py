"""Gathers over a box of ``view ⊕ patch`` for one or two operands, combined element-wise, with
an element-wise epilogue: the kernel behind ``gather_combine`` (residual add, SE scaling),
``gather_concat`` (one launch per operand into its channel slice) and ``project`` (the box is
the whole map).

``out[b, c, i, j] = epilogue(A[b, c, y0[b]+i, x0[b]+j] ∘ B[b, c, y0[b]+i, x0[b]+j])`` where each
operand reads its patch inside its own box and its view (of image ``image[b]``) elsewhere, and
zero outside the map. A broadcast view (``expand``) has stride 0 on the broadcast axes.
Twins: ``runtime.reference.gather_combine`` / ``gather_concat`` / ``project``.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from compiler.ir import Arith, Combine, Concat, Node
from runtime.kernels.cells import channels_last, in_box, load_cells, query_rows
from runtime.kernels.epilogue import IDENTITY, Epilogue, apply
from runtime.kernels.launch import Grid, run_kernel
from runtime.values import Env, Patch, Value, operands

# ``ARITH`` codes of the kernel; 0 copies the first operand.
ARITH_CODES = {
    None: 0,
    Arith.ADD: 1,
    Arith.SUB: 2,
    Arith.MUL: 3,
    Arith.DIV: 4,
    Arith.RSUB: 5,
    Arith.RDIV: 6,
}


def get_autotune_configs() -> list[triton.Config]:
    """Tile shapes (BLOCK_M cells × BLOCK_C channels)."""
    shapes = [(32, 32, 4), (16, 128, 4), (128, 16, 4)]  # 64×64 spills 4 KiB (compile check)
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_C": c}, num_warps=w, num_stages=1) for m, c, w in shapes
    ]


CONFIGS = tuple(get_autotune_configs())

INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_C": 8}


@triton.jit
def _operand(view, patch, patch_y, patch_x, img, b, row_ok, y, x, PH, PW, channel, ok,
             HAS_PATCH: tl.constexpr, sv_n, sv_c, sv_h, sv_w, sp_b, sp_c, sp_h, sp_w):  # fmt: skip
    """One operand's values at cells ``(y, x)`` (one per row): its patch inside its box, else
    its view."""
    view_offset = (img * sv_n + y * sv_h + x * sv_w)[:, None] + (channel * sv_c)[None, :]
    if HAS_PATCH:
        top = tl.load(patch_y + b, mask=row_ok, other=0).to(tl.int32)
        left = tl.load(patch_x + b, mask=row_ok, other=0).to(tl.int32)
        patch_row = b * sp_b + (y - top) * sp_h + (x - left) * sp_w
        inside = in_box(y, x, top, left, PH, PW)[:, None]
        patch_offset = patch_row[:, None] + (channel * sp_c)[None, :]
        value = load_cells(view, patch, view_offset, patch_offset, inside, ok)
    else:
        value = tl.load(view + view_offset, mask=ok, other=0.0)
    return value.to(tl.float32)


@triton.jit
def gather_combine_kernel(
    a_view,
    a_patch,
    a_top,
    a_left,
    b_view,
    b_patch,
    b_top,
    b_left,
    image,
    box_y,
    box_x,
    out,
    scale,
    shift,
    alpha,
    beta,
    M,
    C,
    H,
    W,
    BH,
    BW,
    A_PH,
    A_PW,
    B_PH,
    B_PW,
    sa_n,
    sa_c,
    sa_h,
    sa_w,
    sap_b,
    sap_c,
    sap_h,
    sap_w,
    sb_n,
    sb_c,
    sb_h,
    sb_w,
    sbp_b,
    sbp_c,
    sbp_h,
    sbp_w,
    so_b,
    so_c,
    so_h,
    so_w,
    A_PATCH: tl.constexpr,
    B_PATCH: tl.constexpr,
    ARITH: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok, col_ok = rows < M, channel < C
    b, i, j, img, y, x = query_rows(rows, row_ok, image, box_y, box_x, BH, BW, 1, 1)
    ok = (row_ok & (y >= 0) & (y < H) & (x >= 0) & (x < W))[:, None] & col_ok[None, :]
    value = _operand(a_view, a_patch, a_top, a_left, img, b, row_ok, y, x, A_PH, A_PW, channel,
                     ok, A_PATCH, sa_n, sa_c, sa_h, sa_w, sap_b, sap_c, sap_h, sap_w)  # fmt: skip
    if ARITH != 0:
        other = _operand(b_view, b_patch, b_top, b_left, img, b, row_ok, y, x, B_PH, B_PW,
                         channel, ok, B_PATCH, sb_n, sb_c, sb_h, sb_w, sbp_b, sbp_c, sbp_h,
                         sbp_w)  # fmt: skip
        if ARITH == 1:
            value = value + other
        elif ARITH == 2:
            value = value - other
        elif ARITH == 3:
            value = value * other
        elif ARITH == 4:
            value = value / other
        elif ARITH == 5:
            value = other - value
        else:
            value = other / value
    value = apply(
        value, channel[None, :], col_ok[None, :], scale, shift, alpha, beta, HAS_SCALE, HAS_SHIFT,
        ACT,
    )  # fmt: skip
    pointers = out + (b * so_b + i * so_h + j * so_w)[:, None] + (channel * so_c)[None, :]
    tl.store(pointers, value.to(out.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


_autotuned = triton.autotune(configs=list(CONFIGS), key=["M", "C", "ARITH"])(gather_combine_kernel)

Operand = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]  # view, patch, top, left


def gather_combine(
    operands: list[Operand],
    image: Tensor,
    box_y: Tensor,
    box_x: Tensor,
    box: tuple[int, int],
    arith: Arith | None = None,
    *,
    epilogue: Epilogue = IDENTITY,
    out: Tensor | None = None,
) -> Tensor:
    """``epilogue(A ∘ B)`` (or ``epilogue(A)`` with one operand and no ``arith``) over each
    query's box at ``(box_y, box_x)`` of size ``box``; ``out`` may be a channel slice of a
    larger tensor."""
    assert len(operands) == (1 if arith is None else 2)
    first = operands[0]
    second = operands[1] if arith is not None else first
    channels, height, width = first[0].shape[1:]
    queries = len(box_y)
    if out is None:
        out = channels_last(queries, channels, *box, device=box_y.device, dtype=first[0].dtype)
    m = queries * box[0] * box[1]
    args = [
        *_pointers(first),
        *_pointers(second),
        image.to(torch.int64).contiguous(),
        box_y.to(torch.int64).contiguous(),
        box_x.to(torch.int64).contiguous(),
        out,
        *epilogue.pointers(first[0]),
        m,
        channels,
        height,
        width,
        *box,
        *_patch_size(first),
        *_patch_size(second),
        *first[0].stride(),
        *_patch_strides(first),
        *second[0].stride(),
        *_patch_strides(second),
        *out.stride(),
    ]
    flags = {
        "A_PATCH": first[1] is not None,
        "B_PATCH": second[1] is not None,
        "ARITH": ARITH_CODES[arith],
        **epilogue.flags(),
    }

    grid = programs(m, channels)
    run_kernel(
        gather_combine_kernel, _autotuned, grid, args, flags, INTERPRETER_CONFIG, box_y.device
    )
    return out


def _pointers(operand: Operand) -> tuple[Any, ...]:
    view, patch, top, left = operand
    if patch is None:
        return view, view, view, view  # never read
    assert top is not None and left is not None
    return view, patch, top.to(torch.int64).contiguous(), left.to(torch.int64).contiguous()


def _patch_size(operand: Operand) -> tuple[int, int]:
    patch = operand[1]
    return (0, 0) if patch is None else (patch.shape[2], patch.shape[3])


def _patch_strides(operand: Operand) -> tuple[int, ...]:
    patch = operand[1]
    return (0, 0, 0, 0) if patch is None else tuple(patch.stride())


def _box(node: Node, env: Env) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """A boxed combination's per-query origins and box size."""
    assert node.update is not None and node.update.box is not None
    y0, x0 = env.batch.origins[node.name]
    return y0, x0, (node.update.box.h, node.update.box.w)


def _operands(node: Node, inputs: list[Value], env: Env) -> list[Operand]:
    return [
        (view, None, None, None) if patch is None else (view, patch.values, patch.y0, patch.x0)
        for view, patch in operands(node, inputs, env)
    ]


def programs(rows: int, channels: int) -> Grid:
    """The grid over ``rows`` output cells × ``channels``."""
    return lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(channels, meta["BLOCK_C"]))


def launch_combine(
    node: Node, inputs: list[Value], env: Env, epilogue: Epilogue = IDENTITY
) -> Patch:
    """A boxed element-wise combination (``KernelId.GATHER_COMBINE``), epilogue folded in."""
    assert isinstance(node.op, Combine)
    y0, x0, box = _box(node, env)
    values = gather_combine(
        _operands(node, inputs, env), env.batch.image, y0, x0, box, node.op.arith,
        epilogue=epilogue,
    )  # fmt: skip
    return Patch(values, y0, x0)


def launch_concat(
    node: Node, inputs: list[Value], env: Env, epilogue: Epilogue = IDENTITY
) -> Patch:
    """A boxed channel concat (``KernelId.GATHER_CONCAT``): one gather per operand into its
    channel slice, each with its slice of the epilogue."""
    assert isinstance(node.op, Concat)
    y0, x0, box = _box(node, env)
    dtype = env.views[node.inputs[0]].dtype
    out = channels_last(len(y0), node.schema.shape[0], *box, device=y0.device, dtype=dtype)
    start = 0
    for operand in _operands(node, inputs, env):
        stop = start + operand[0].shape[1]
        gather_combine(
            [operand], env.batch.image, y0, x0, box,
            epilogue=epilogue.slice(start, stop), out=out[:, start:stop],
        )  # fmt: skip
        start = stop
    return Patch(out, y0, x0)


def launch_project(
    node: Node, inputs: list[Value], env: Env, epilogue: Epilogue = IDENTITY
) -> Tensor:
    """``view ⊕ patch`` as a full map per query (``KernelId.PROJECT``; no epilogue folds)."""
    assert epilogue is IDENTITY
    (patch,) = inputs
    assert isinstance(patch, Patch)
    view = env.views[node.inputs[0]]
    zeros = torch.zeros_like(patch.y0)
    operand = (view, patch.values, patch.y0, patch.x0)
    height, width = view.shape[2:]
    return gather_combine([operand], env.batch.image, zeros, zeros, (height, width))
