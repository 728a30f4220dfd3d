"""What every gather kernel shares: which query and output cell each tile row is
(``query_rows``), and the read of ``view ⊕ patch`` at a tile of cells (``load_cells``).

``(view[img, c, y, x] ⊕ patch[b, c, y − top, x − left])``: the query's patch inside its box
``[top, top + PH) × [left, left + PW)``, the shared view of its image elsewhere, 0 where ``ok``
is false (outside the map, or past the tile's edge). Every index argument is already
broadcastable to the tile (rows are output cells of all queries, columns channels or
reduction steps).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_cells(view, patch, img, b, channel, y, x, top, left, PH, PW, ok,
               sv_n, sv_c, sv_h, sv_w, sp_b, sp_c, sp_h, sp_w):  # fmt: skip
    py, px = y - top, x - left
    inside = (py >= 0) & (py < PH) & (px >= 0) & (px < PW)
    from_view = tl.load(
        view + img * sv_n + channel * sv_c + y * sv_h + x * sv_w, mask=ok & ~inside, other=0.0
    )
    from_patch = tl.load(
        patch + b * sp_b + channel * sp_c + py * sp_h + px * sp_w, mask=ok & inside, other=0.0
    )
    return tl.where(inside, from_patch, from_view)


@triton.jit
def query_rows(rows, ok, image, origin_y, origin_x, OH, OW, SY, SX):
    """Tile rows as output cells of all queries, row-major over each query's ``OH×OW`` box:
    the query ``b``, the cell ``(i, j)``, the query's image and the input cell its window
    starts at, ``(origin_y[b] + i·SY, origin_x[b] + j·SX)``."""
    b = rows // (OH * OW)
    i = (rows % (OH * OW)) // OW
    j = rows % OW
    img = tl.load(image + b, mask=ok, other=0)
    y = tl.load(origin_y + b, mask=ok, other=0) + i * SY
    x = tl.load(origin_x + b, mask=ok, other=0) + j * SX
    return b, i, j, img, y, x
