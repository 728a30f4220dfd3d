"""What every gather kernel shares: which query and output cell each tile row is
(``query_rows``), and the read of ``view ⊕ patch`` at a tile of cells (``load_cells``).

Addressing is separable: an offset is a per-row part (which query, which output cell; 64-bit
where it crosses images or queries) plus a per-column part (channel and kernel tap; 32-bit,
inside one image's map or one query's box), added once per tile — so the 2-D tiles the loops
keep live are 32-bit coordinates and one pointer tile, not 64-bit products.

32-bit parts are safe because every per-image view and every batch buffer holds at most 2³⁰
values: the batching rule caps the batch, and the Triton backend checks the plan before it runs
(``compiler.limits``, ``runtime.kernels.limits``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


def channels_last(*shape: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """An uninitialized ``[B, C, H, W]`` buffer whose cells' channels are contiguous: kernels
    store and read a cell's channels together (vectorized), and Triton lays tiles out so that
    each thread holds few rows — the per-row state of the loops stays small."""
    return torch.empty(shape, device=device, dtype=dtype, memory_format=torch.channels_last)


@triton.jit
def query_rows(rows, ok, image, origin_y, origin_x, OH, OW, SY, SX):
    """Tile rows as output cells of all queries, row-major over each query's ``OH×OW`` box:
    the query ``b`` (int64), the cell ``(i, j)``, the query's image (int64) and the input cell
    its window starts at, ``(origin_y[b] + i·SY, origin_x[b] + j·SX)`` (int32)."""
    b = rows // (OH * OW)
    i = (rows % (OH * OW)) // OW
    j = rows % OW
    img = tl.load(image + b, mask=ok, other=0)
    y = tl.load(origin_y + b, mask=ok, other=0).to(tl.int32) + i * SY
    x = tl.load(origin_x + b, mask=ok, other=0).to(tl.int32) + j * SX
    return b.to(tl.int64), i, j, img, y, x


@triton.jit
def load_cells(view, patch, view_offset, patch_offset, inside, ok):
    """``view ⊕ patch`` at a tile: ``patch[patch_offset]`` where ``inside`` (the query's box),
    ``view[view_offset]`` elsewhere, 0 where ``ok`` is false (outside the map, or past the
    tile's edge). One load: the pointer is chosen, not the value."""
    pointer = tl.where(inside, patch + patch_offset, view + view_offset)
    return tl.load(pointer, mask=ok, other=0.0)


@triton.jit
def in_box(y, x, top, left, PH, PW):
    """Whether cells ``(y, x)`` lie in the box ``[top, top + PH) × [left, left + PW)``."""
    return (y >= top) & (y < top + PH) & (x >= left) & (x < left + PW)
