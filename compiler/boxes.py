"""Update-box arithmetic, vectorized over queries with numpy.

Sizes are uniform across queries (one plan serves every query); origins are per query. Per
dimension, for an input box starting at ``x`` of width ``W`` through a window of extent ``K``
(dilated kernel), stride ``S``, leading padding ``P`` and output width ``W_O`` (research §2.3):

- output start ``x_O = max(ceil((P + x − K + 1)/S), 0)``, clamped inward to ``W_O − W_Ō``;
- output width ``W_Ō = min(ceil((W + K − 1)/S), W_O)``;
- read-in window ``x_R = x_O·S − P``, ``W_R = K + (W_Ō − 1)·S``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from compiler.ir import (
    Combine,
    Concat,
    JoinAggregate,
    Node,
    Occlude,
    Pad,
    Pool,
    State,
    Upsample,
)
from compiler.types import Size2, Window

# Per-query starts: NumPy while planning, torch tensors on the device while running.
Starts = TypeVar("Starts", np.ndarray, torch.Tensor)

Origins = tuple[np.ndarray, np.ndarray]  # (y0, x0), int64 arrays of one entry per position


def ceil_div(a: np.ndarray, b: int) -> np.ndarray:
    """Ceiling division that is exact for negative numerators.

    >>> ceil_div(np.array([-3, -2, 0, 5]), 2).tolist()
    [-1, -1, 0, 3]
    """
    return -((-a) // b)


def window_size(size: int, extent: int, stride: int, out_dim: int) -> int:
    """Uniform output width of a window operator for an input box of width ``size``.

    >>> window_size(16, 3, 1, 224), window_size(20, 2, 2, 112), window_size(5, 7, 1, 7)
    (18, 11, 7)
    """
    return min(math.ceil((size + extent - 1) / stride), out_dim)


def output_box(box_in: Size2, window: Window, out: Size2) -> Size2:
    """The uniform output box of a window operator for an input box (``window_size`` per side)."""
    extent, stride = window.extent, window.stride
    return Size2(
        window_size(box_in.h, extent.h, stride.h, out.h),
        window_size(box_in.w, extent.w, stride.w, out.w),
    )


def read_size(box: Size2, window: Window) -> Size2:
    """The read-in window ``K + (W_Ō − 1)·S`` per side that produces an output box."""
    extent, stride = window.extent, window.stride
    return Size2(extent.h + (box.h - 1) * stride.h, extent.w + (box.w - 1) * stride.w)


def window_start(
    start: np.ndarray, extent: int, stride: int, pad: int, size: int, out_dim: int
) -> np.ndarray:
    """Per-query output start, clamped so that ``[start, start + size)`` lies in the map.

    >>> window_start(np.array([104, 0, 220]), 3, 1, 1, 18, 224).tolist()
    [103, 0, 206]
    """
    first = np.maximum(ceil_div(start + pad - extent + 1, stride), 0)
    starts: np.ndarray = np.minimum(first, out_dim - size)
    return starts


def read_window(
    out_start: Starts, out_size: int, extent: int, stride: int, pad: int
) -> tuple[Starts, int]:
    """The input cells a window operator reads to produce ``[out_start, out_start + out_size)``.

    >>> start, size = read_window(np.array([0, 5]), 4, 3, 2, 1)
    >>> start.tolist(), size
    ([-1, 9], 9)
    """
    return out_start * stride - pad, extent + (out_size - 1) * stride


def bounding_size(starts: list[np.ndarray], sizes: list[int], dim: int) -> int:
    """Uniform size of the bounding box of several boxes: the largest over queries.

    >>> bounding_size([np.array([3, 0]), np.array([4, 1])], [4, 5], 16)
    6
    """
    low = np.minimum.reduce(starts)
    high = np.maximum.reduce([s + n for s, n in zip(starts, sizes)])
    return int(min(np.max(high - low), dim))


def bounding_start(starts: list[np.ndarray], size: int, dim: int) -> np.ndarray:
    """Per-query start of the bounding box, clamped inward for the uniform ``size``."""
    start: np.ndarray = np.clip(np.minimum.reduce(starts), 0, dim - size)
    return start


@dataclass(frozen=True)
class Positions:
    """Top-left corners of the patch, one per query (row-major over the heatmap grid).

    A last window that would cross the border is clipped (Captum's convention); ``top`` and
    ``left`` are the unclipped corners.
    """

    top: np.ndarray
    left: np.ndarray
    rows: int
    cols: int

    @classmethod
    def grid(cls, image: Size2, patch: Size2, stride: Size2) -> Positions:
        """Every position: ``i·Sy`` for ``i = 0 … ceil((H − Ph)/Sy)``, and the same along x
        (Captum's windows). With a stride larger than the patch, which Captum refuses, a last
        window that would start past the border is dropped.

        >>> p = Positions.grid(Size2(11, 224), Size2(4, 16), Size2(3, 4))
        >>> p.rows, p.cols, int(p.top[-1]), len(p)
        (4, 53, 9, 212)
        >>> Positions.grid(Size2(2, 5), Size2(1, 1), Size2(2, 3)).top.tolist()
        [0, 0]
        """
        rows = min(math.ceil((image.h - patch.h) / stride.h) + 1, math.ceil(image.h / stride.h))
        cols = min(math.ceil((image.w - patch.w) / stride.w) + 1, math.ceil(image.w / stride.w))
        tops = np.arange(rows, dtype=np.int64) * stride.h
        lefts = np.arange(cols, dtype=np.int64) * stride.w
        top, left = np.meshgrid(tops, lefts, indexing="ij")
        return cls(top.ravel(), left.ravel(), rows, cols)

    @classmethod
    def centre(cls, image: Size2, patch: Size2) -> Positions:
        """The one position the theoretical speedup is measured at (research §2.2).

        >>> centre = Positions.centre(Size2(224, 200), Size2(16, 15))
        >>> centre.top.tolist(), centre.left.tolist(), centre.rows, centre.cols
        ([104], [92], 1, 1)
        """
        top = np.array([(image.h - patch.h) // 2], dtype=np.int64)
        left = np.array([(image.w - patch.w) // 2], dtype=np.int64)
        return cls(top, left, 1, 1)

    def __len__(self) -> int:
        return len(self.top)


@dataclass(frozen=True)
class Placed:
    """Where a boxed node's update lies, per query: the box's ``origins`` and the ``centre`` of
    the patch projected to this node (continuous coordinates: cell ``i`` spans ``[i, i + 1)``),
    around which an approximate cap places the boxes it cuts."""

    origins: Origins
    centre: tuple[np.ndarray, np.ndarray]  # (y, x), float64


def origins_of(
    name: str,
    nodes: Mapping[str, Node],
    positions: Positions,
    memo: dict[str, Placed] | None = None,
) -> Origins:
    """Per-query origins of the boxed node ``name``: a pure function of the boxes of it and
    its boxed ancestors in ``nodes`` and of the queries' ``positions`` (``memo`` caches what
    it computed for nodes that will not change)."""
    memo = {} if memo is None else memo
    pending = [name]  # depth-first over boxed ancestors, without recursion (deep plans)
    while pending:
        current = pending[-1]
        if current in memo:
            pending.pop()
            continue
        inputs = [nodes[i] for i in nodes[current].inputs]
        missing = [i.name for i in inputs if _boxed(i) and i.name not in memo]
        if missing:
            pending.extend(missing)
            continue
        pending.pop()
        known = {i.name: memo[i.name] for i in inputs if _boxed(i)}
        memo[current] = node_placement(nodes[current], inputs, known, positions)
    return memo[name].origins


def plan_origins(nodes: Mapping[str, Node], positions: Positions) -> dict[str, Origins]:
    """Per-query origins of every boxed node of a rewritten plan."""
    memo: dict[str, Placed] = {}
    return {n: origins_of(n, nodes, positions, memo) for n, node in nodes.items() if _boxed(node)}


def _boxed(node: Node) -> bool:
    return node.update is not None and node.update.state is State.BOX


def node_placement(
    node: Node, inputs: list[Node], placed: Mapping[str, Placed], positions: Positions
) -> Placed:
    """A boxed node's placement, from its inputs' placements and its own update form."""
    update = node.update
    assert update is not None and update.box is not None
    box, size, op = update.box, node.schema.size, node.op
    if isinstance(op, Occlude):
        # A clipped last window shifts inward; the cells it adds keep their image values.
        top, left = positions.top, positions.left
        return Placed(
            (np.minimum(top, size.h - box.h), np.minimum(left, size.w - box.w)),
            (
                (top + np.minimum(top + box.h, size.h)) / 2,
                (left + np.minimum(left + box.w, size.w)) / 2,
            ),
        )
    if isinstance(op, (Combine, Concat)):
        boxed = [placed[i.name] for i in inputs if i.name in placed]
        return Placed(
            (
                bounding_start([p.origins[0] for p in boxed], box.h, size.h),
                bounding_start([p.origins[1] for p in boxed], box.w, size.w),
            ),
            (np.mean([p.centre[0] for p in boxed], 0), np.mean([p.centre[1] for p in boxed], 0)),
        )
    (y0, x0), (cy, cx) = placed[inputs[0].name].origins, placed[inputs[0].name].centre
    if isinstance(op, (JoinAggregate, Pool)):
        window = op.window
        extent, stride, pad = window.extent, window.stride, window.padding
        source = inputs[0].update
        assert source is not None and source.box is not None
        exact = output_box(source.box, window, size) if update.cut is not None else box
        return Placed(
            (
                _cut_start(y0, cy, extent.h, stride.h, pad.top, exact.h, box.h, size.h),
                _cut_start(x0, cx, extent.w, stride.w, pad.left, exact.w, box.w, size.w),
            ),
            (
                (cy + pad.top - extent.h / 2) / stride.h + 0.5,
                (cx + pad.left - extent.w / 2) / stride.w + 0.5,
            ),
        )
    if isinstance(op, Pad):
        return Placed(
            (y0 + op.padding.top, x0 + op.padding.left), (cy + op.padding.top, cx + op.padding.left)
        )
    if isinstance(op, Upsample):
        sh, sw = op.scale.h, op.scale.w
        if op.mode.copies_blocks:
            origins = (y0 * sh, x0 * sw)
        else:  # bilinear: from the first output row that reads row y0 − 1
            origins = (
                np.clip(y0 * sh - (sh + 1) // 2, 0, size.h - box.h),
                np.clip(x0 * sw - (sw + 1) // 2, 0, size.w - box.w),
            )
        return Placed(origins, (cy * sh, cx * sw))
    return placed[inputs[0].name]  # element-wise: the box does not move


def _cut_start(
    start: np.ndarray,
    centre: np.ndarray,
    extent: int,
    stride: int,
    pad: int,
    exact: int,
    size: int,
    out_dim: int,
) -> np.ndarray:
    """Per-query output start of a window operator's box of width ``size``: the exact start
    when nothing was cut (``size == exact``); otherwise centred on the patch's projected centre
    and slid to stay inside the exact box.

    >>> start, centre = np.array([0, 40]), np.array([8.0, 56.0])  # patches at 0 and 48, side 16
    >>> _cut_start(start, centre, 3, 2, 1, 10, 10, 32).tolist()  # uncut: the exact formula
    [0, 20]
    >>> _cut_start(start, centre, 3, 2, 1, 10, 6, 32).tolist()  # around 4.25; 28.25, slid in
    [1, 24]
    """
    first = window_start(start, extent, stride, pad, exact, out_dim)
    if size == exact:
        return first
    projected = (centre + pad - extent / 2) / stride + 0.5
    around = np.floor(projected - size / 2 + 0.5).astype(np.int64)
    return np.clip(around, first, first + exact - size)
