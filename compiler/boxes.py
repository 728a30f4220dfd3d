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
from compiler.types import Size, Window

# Per-query starts: NumPy while planning, torch tensors on the device while running.
Starts = TypeVar("Starts", np.ndarray, torch.Tensor)

Origins = tuple[np.ndarray, ...]  # one int64 array per spatial axis, one entry per position


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


def output_box(box_in: Size, window: Window, out: Size) -> Size:
    """The uniform output box of a window operator for an input box (``window_size`` per axis)."""
    return box_in.map(window_size, window.extent, window.stride, out)


def fitted_box(origins: Origins, box_in: Size, window: Window, out: Size) -> Size:
    """The output box of a window operator that covers every query's changed outputs: per
    axis, the widest ``[first, last]`` over the queries of the outputs whose window meets the
    query's input box ``[o, o + b)`` (clipped to the map). Never wider than ``output_box``;
    narrower where every query's box meets the border, or where the queries' alignment with
    the stride leaves the uniform bound's last cell unused.

    A 2×2 pool of stride 2 over 4-wide boxes: the uniform bound is 3 outputs, but boxes that
    all start on even cells change 2 (rows; one odd start needs 3: columns). A 3×3 convolution
    of 4-wide boxes changes 6 outputs inside the map, 5 against either border (columns):

    >>> from compiler.types import Padding
    >>> pool = Window(Size(2, 2), Size(2, 2), Size(1, 1), Padding.zero(2))
    >>> fitted_box((np.array([0, 8]), np.array([2, 5])), Size(4, 4), pool, Size(8, 8))
    Size(2, 3)
    >>> conv = Window(Size(3, 3), Size(1, 1), Size(1, 1), Padding((1, 1), (1, 1)))
    >>> fitted_box((np.array([5, 9]), np.array([0, 12])), Size(4, 4), conv, Size(16, 16))
    Size(6, 5)
    """
    uniform = output_box(box_in, window, out)
    sizes = []
    for axis, (starts, b, n) in enumerate(zip(origins, box_in, out)):
        if len(starts) == 0:
            sizes.append(uniform[axis])
            continue
        extent, stride = window.extent[axis], window.stride[axis]
        pad = window.padding.before[axis]
        first = np.maximum(ceil_div(starts + pad - extent + 1, stride), 0)
        last = np.minimum((starts + b - 1 + pad) // stride, n - 1)
        sizes.append(int(min(uniform[axis], max(1, int(np.max(last - first)) + 1))))
    return Size(*sizes)


def read_size(box: Size, window: Window) -> Size:
    """The read-in window ``K + (W_Ō − 1)·S`` per axis that produces an output box."""
    return box.map(lambda b, k, s: k + (b - 1) * s, window.extent, window.stride)


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
    """The patch's first cell along each spatial axis, one per query (row-major over the
    heatmap's grid, the last axis fastest).

    A last window that would cross the border is clipped (Captum's convention); ``starts`` are
    the unclipped corners.
    """

    starts: tuple[np.ndarray, ...]
    grid: tuple[int, ...]  # positions along each axis

    @classmethod
    def grid_of(cls, image: Size, patch: Size, stride: Size) -> Positions:
        """Every position: ``i·S`` for ``i = 0 … ceil((N − P)/S)`` along each axis (Captum's
        windows). With a stride larger than the patch, which Captum refuses, a last window
        that would start past the border is dropped.

        >>> p = Positions.grid_of(Size(11, 224), Size(4, 16), Size(3, 4))
        >>> p.grid, int(p.starts[0][-1]), len(p)
        ((4, 53), 9, 212)
        >>> Positions.grid_of(Size(2, 5), Size(1, 1), Size(2, 3)).starts[0].tolist()
        [0, 0]
        >>> Positions.grid_of(Size(8, 8, 8), Size(4, 4, 4), Size(4, 4, 4)).grid
        (2, 2, 2)
        """
        counts = tuple(
            min(math.ceil((n - p) / s) + 1, math.ceil(n / s))
            for n, p, s in zip(image, patch, stride)
        )
        axes = [np.arange(c, dtype=np.int64) * s for c, s in zip(counts, stride)]
        mesh = np.meshgrid(*axes, indexing="ij")
        return cls(tuple(m.ravel() for m in mesh), counts)

    @classmethod
    def product(cls, axes: tuple[tuple[int, ...], ...]) -> Positions:
        """Every combination of the given starts along each axis (row-major, the last axis
        fastest): a sliding-window placement such as MONAI's, whose last window is moved back
        to end at the border.

        >>> p = Positions.product(((0, 4, 6), (0, 5)))
        >>> p.grid, [s.tolist() for s in p.starts]
        ((3, 2), [[0, 0, 4, 4, 6, 6], [0, 5, 0, 5, 0, 5]])
        """
        mesh = np.meshgrid(*[np.asarray(a, dtype=np.int64) for a in axes], indexing="ij")
        return cls(tuple(m.ravel() for m in mesh), tuple(len(a) for a in axes))

    @classmethod
    def listed(cls, starts: tuple[tuple[int, ...], ...]) -> Positions:
        """Windows at the given first cells, one per query (``starts[a][q]`` along axis
        ``a``), in no grid: the regions of ``compiler.regions``; their grid is ``(queries,)``.

        >>> p = Positions.listed(((3, 0), (1, 7)))
        >>> p.grid, len(p), [s.tolist() for s in p.starts]
        ((2,), 2, [[3, 0], [1, 7]])
        """
        arrays = tuple(np.asarray(a, dtype=np.int64) for a in starts)
        return cls(arrays, (len(arrays[0]),))

    @classmethod
    def centre(cls, image: Size, patch: Size) -> Positions:
        """The one position the theoretical speedup is measured at (research §2.2).

        >>> centre = Positions.centre(Size(224, 200), Size(16, 15))
        >>> [s.tolist() for s in centre.starts], centre.grid
        ([[104], [92]], (1, 1))
        """
        starts = tuple(np.array([(n - p) // 2], dtype=np.int64) for n, p in zip(image, patch))
        return cls(starts, (1,) * image.d)

    @property
    def d(self) -> int:
        return len(self.starts)

    @property
    def top(self) -> np.ndarray:
        """The first row of each 2-D position."""
        return self._axis(0)

    @property
    def left(self) -> np.ndarray:
        """The first column of each 2-D position."""
        return self._axis(1)

    @property
    def rows(self) -> int:
        return self._count(0)

    @property
    def cols(self) -> int:
        return self._count(1)

    def _axis(self, index: int) -> np.ndarray:
        if self.d != 2:
            raise AttributeError(f"{self.d}-D positions have no rows and columns: use .starts")
        return self.starts[index]

    def _count(self, index: int) -> int:
        if self.d != 2:
            raise AttributeError(f"{self.d}-D positions have no rows and columns: use .grid")
        return self.grid[index]

    def __len__(self) -> int:
        return len(self.starts[0])


@dataclass(frozen=True)
class Placed:
    """Where a boxed node's update lies, per query: the box's ``origins`` and the ``centre`` of
    the patch projected to this node (continuous coordinates: cell ``i`` spans ``[i, i + 1)``),
    around which an approximate cap places the boxes it cuts."""

    origins: Origins
    centre: tuple[np.ndarray, ...]  # per spatial axis, float64


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
        starts = positions.starts
        return Placed(
            tuple(np.minimum(s, n - b) for s, n, b in zip(starts, size, box)),
            tuple((s + np.minimum(s + b, n)) / 2 for s, n, b in zip(starts, size, box)),
        )
    if isinstance(op, (Combine, Concat)):
        boxed = [placed[i.name] for i in inputs if i.name in placed]
        return Placed(
            tuple(
                bounding_start([p.origins[a] for p in boxed], box[a], size[a])
                for a in range(size.d)
            ),
            tuple(np.mean([p.centre[a] for p in boxed], 0) for a in range(size.d)),
        )
    origins, centre = placed[inputs[0].name].origins, placed[inputs[0].name].centre
    if isinstance(op, (JoinAggregate, Pool)):
        window = op.window
        extent, stride, pad = window.extent, window.stride, window.padding.before
        source = inputs[0].update
        assert source is not None and source.box is not None
        exact = output_box(source.box, window, size) if update.cut is not None else box
        axes = range(size.d)
        return Placed(
            tuple(
                _cut_start(
                    origins[a], centre[a], extent[a], stride[a], pad[a], exact[a], box[a], size[a]
                )  # fmt: skip
                for a in axes
            ),
            tuple((centre[a] + pad[a] - extent[a] / 2) / stride[a] + 0.5 for a in axes),
        )
    if isinstance(op, Pad):
        before = op.padding.before
        return Placed(
            tuple(o + b for o, b in zip(origins, before)),
            tuple(c + b for c, b in zip(centre, before)),
        )
    if isinstance(op, Upsample):
        scale = op.scale
        if op.mode.copies_blocks:
            moved = tuple(o * s for o, s in zip(origins, scale))
        else:  # (bi/tri)linear: from the first output cell that reads cell o − 1
            moved = tuple(
                np.clip(o * s - (s + 1) // 2, 0, n - b)
                for o, s, n, b in zip(origins, scale, size, box)
            )
        return Placed(moved, tuple(c * s for c, s in zip(centre, scale)))
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
