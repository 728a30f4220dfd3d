"""Per-query values and the gathers that read ``view ⊕ patch`` windows.

A per-query value is a ``Patch`` (values of a box of uniform size plus per-query origins), a
full tensor with a leading batch axis, or ``None`` for a clean node (read its view). Views have
a leading image axis; ``Batch.image`` maps each query to its image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from compiler import boxes
from compiler.ir import JoinAggregate, Node, Pool
from compiler.types import Size2
from runtime.weights import Weights


@dataclass
class Patch:
    """Values of a per-query box: ``values[b]`` covers rows ``y0[b] …`` and columns ``x0[b] …``."""

    values: Tensor  # [B, C, h, w]
    y0: Tensor  # [B] int64
    x0: Tensor  # [B] int64


Value = Patch | Tensor | None


@dataclass
class Batch:
    """What kernels know about the queries of the current batch."""

    image: Tensor  # [B] image index of each query
    top: Tensor  # [B] unclipped patch corner
    left: Tensor
    origins: dict[str, tuple[Tensor, Tensor]]  # node -> per-query box origin


@dataclass
class Env:
    """Everything a kernel may read besides its inputs."""

    views: dict[str, Tensor]
    weights: Weights
    batch: Batch
    cache: dict[str, Tensor] = field(default_factory=dict)  # derived constants, e.g. divisors


def gather(
    view: Tensor | None,
    patch: Patch | None,
    image: Tensor,
    y0: Tensor,
    x0: Tensor,
    size: Size2,
    map_size: Size2,
    fill: float = 0.0,
) -> Tensor:
    """``window[b, c, i, j] = (view[image[b]] ⊕ patch[b])[c, y0[b] + i, x0[b] + j]``.

    Cells outside the map take ``fill`` (the operator's padding); a missing view reads zeros.
    Works on channels-last rows (one cell's channels are contiguous): one gather from the view,
    then only the cells inside each query's patch are overwritten. The result is a
    channels-last ``[B, C, h, w]`` tensor.
    """
    if patch is not None and _same_box(patch, y0, x0, size):
        return patch.values
    device = image.device
    ys = y0[:, None] + torch.arange(size.h, device=device)  # [B, h]
    xs = x0[:, None] + torch.arange(size.w, device=device)  # [B, w]
    if view is not None:
        rows = _cells(view)
        window = rows[
            image[:, None, None],
            ys.clamp(0, map_size.h - 1)[:, :, None],
            xs.clamp(0, map_size.w - 1)[:, None, :],
        ]  # [B, h, w, C]
    else:
        assert patch is not None
        shape = (len(y0), size.h, size.w, patch.values.shape[1])
        window = torch.zeros(shape, device=device, dtype=patch.values.dtype)
    if patch is not None:
        _overlay(window, patch, ys, xs)
    outside = ~(
        ((ys >= 0) & (ys < map_size.h))[:, :, None] & ((xs >= 0) & (xs < map_size.w))[:, None, :]
    )
    if bool(outside.any()):
        window[outside] = fill
    return window.permute(0, 3, 1, 2)


def _cells(tensor: Tensor) -> Tensor:
    """``[N, C, H, W]`` as ``[N, H, W, C]`` (free for channels-last storage)."""
    return tensor.permute(0, 2, 3, 1)


def _same_box(patch: Patch, y0: Tensor, x0: Tensor, size: Size2) -> bool:
    h, w = patch.values.shape[2:]
    return (h, w) == (size.h, size.w) and torch.equal(patch.y0, y0) and torch.equal(patch.x0, x0)


def _overlay(window: Tensor, patch: Patch, ys: Tensor, xs: Tensor) -> None:
    """Overwrite, in place, the window cells that lie in each query's patch."""
    h, w = patch.values.shape[2:]
    py, px = ys - patch.y0[:, None], xs - patch.x0[:, None]
    inside = ((py >= 0) & (py < h))[:, :, None] & ((px >= 0) & (px < w))[:, None, :]
    b, i, j = inside.nonzero(as_tuple=True)
    window[b, i, j] = _cells(patch.values)[b, py[b, i], px[b, j]]


def gather_view(view: Tensor, image: Tensor, y0: Tensor, x0: Tensor, size: Size2) -> Tensor:
    """The view over each query's box (boxes always lie inside the map)."""
    return gather(view, None, image, y0, x0, size, Size2(view.shape[2], view.shape[3]))


def read_origin(node: Node, origin: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Read-in window start ``x_R = x_O·S − P`` of a window operator (``boxes.read_window``)."""
    assert isinstance(node.op, (JoinAggregate, Pool)) and node.update and node.update.box
    w, box = node.op.window, node.update.box
    read_y, _ = boxes.read_window(origin[0], box.h, w.extent.h, w.stride.h, w.padding.top)
    read_x, _ = boxes.read_window(origin[1], box.w, w.extent.w, w.stride.w, w.padding.left)
    return read_y, read_x


def window_operands(
    node: Node, inputs: list[Value], env: Env
) -> tuple[Patch, tuple[Tensor, Tensor], tuple[Tensor, Tensor], Size2]:
    """A boxed window operator's input patch, per-query output origins, read-in origins and
    output box."""
    (patch,) = inputs
    assert isinstance(patch, Patch) and node.update is not None and node.update.box is not None
    origin = env.batch.origins[node.name]
    return patch, origin, read_origin(node, origin), node.update.box


def operands(node: Node, inputs: list[Value], env: Env) -> list[tuple[Tensor, Patch | None]]:
    """Each input of an element-wise combination or a concat: its view (a broadcast clean
    operand expanded to the node's shape) and its patch (None: the input is clean)."""
    found = []
    for name, value in zip(node.inputs, inputs):
        source = env.views[name]
        if value is None and source.shape[1:] != node.schema.shape:
            source = source.expand(-1, *node.schema.shape)
        found.append((source, value if isinstance(value, Patch) else None))
    return found
