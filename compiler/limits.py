"""What the kernels can address and what a GPU will launch: the bounds the planner keeps plans
inside (the batch size) and the Triton backend checks before a plan runs
(``runtime.kernels.limits``).

Offsets inside one image's view or one query's patch, and a tile row's index into a batch
buffer, are 32-bit in the kernels (``runtime.kernels.cells``); per-image and per-query bases
are 64-bit. So every per-image view and every batch buffer must hold at most ``MAX_ELEMENTS``
values. It is 2³⁰, not 2³¹ − 1: a tile computes (but never loads) offsets of padding cells up
to one map beyond an edge and of rows up to one tile past a buffer's end, and those must not
wrap either.
"""

from __future__ import annotations

MAX_ELEMENTS = 1 << 30  # values one per-image view or one batch buffer may hold
GRID = (2**31 - 1, 65_535, 65_535)  # CUDA's largest grid, in x, y and z
MAX_THREADS = 1_024  # CUDA's largest block
