"""Per-query values and the gathers that read ``view ⊕ patch`` windows, over any number of
spatial axes.

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
from compiler.types import Size
from runtime.fill import Fill
from runtime.weights import Weights


class Patch:
    """Values of a per-query box: ``values[b]`` covers, along spatial axis ``a``, the cells
    ``origin[a][b] …``. ``Patch(values, y0, x0)`` in 2-D."""

    __slots__ = ("origin", "values")

    def __init__(self, values: Tensor, *origin: Tensor) -> None:
        self.values = values  # [B, C, *box]
        self.origin = tuple(origin)  # one [B] int64 tensor per spatial axis

    @property
    def y0(self) -> Tensor:
        """The first row of a 2-D box (the Triton kernels' operands)."""
        assert len(self.origin) == 2, "a 2-D patch's rows"
        return self.origin[0]

    @property
    def x0(self) -> Tensor:
        assert len(self.origin) == 2, "a 2-D patch's columns"
        return self.origin[1]

    @property
    def size(self) -> Size:
        return Size(*self.values.shape[2:])


Value = Patch | Tensor | None
Origin = tuple[Tensor, ...]  # one [B] tensor per spatial axis


@dataclass
class Batch:
    """What kernels know about the queries of the current batch."""

    image: Tensor  # [B] image index of each query
    starts: tuple[Tensor, ...]  # per spatial axis: [B] unclipped first cell of the patch
    origins: dict[str, Origin]  # node -> per-query box origin
    position: Tensor | None = None  # [B] index of each query's position in the plan

    @property
    def top(self) -> Tensor:
        return self.starts[0]

    @property
    def left(self) -> Tensor:
        return self.starts[1]


@dataclass
class Env:
    """Everything a kernel may read besides its inputs."""

    views: dict[str, Tensor]
    weights: Weights
    batch: Batch
    cache: dict[str, Tensor] = field(default_factory=dict)  # derived constants, e.g. divisors
    fill: Fill | None = None  # the occluded windows' content, when not the plan's colour


def cells_of(origin: Origin, size: Size) -> list[Tensor]:
    """Per spatial axis ``a``, the cells ``origin[a][b] + [0, size[a])`` shaped to broadcast
    over ``[B, *size]``."""
    d, device = len(origin), origin[0].device
    cells = []
    for a, (start, length) in enumerate(zip(origin, size)):
        shape = [len(start)] + [1] * d
        shape[1 + a] = length
        cells.append((start[:, None] + torch.arange(length, device=device)).reshape(shape))
    return cells


# On a CPU, maps of at least this many channels are gathered by copying each query's slice
# (``_sliced``): 1.6–2.7× faster than advanced indexing at 256–512 channels, slower at 64.
SLICED_CHANNELS = 128


def gather(
    view: Tensor | None,
    patch: Patch | None,
    image: Tensor,
    origin: Origin,
    size: Size,
    map_size: Size,
    fill: float = 0.0,
) -> Tensor:
    """``window[b, c, i…] = (view[image[b]] ⊕ patch[b])[c, origin[b] + i…]``.

    Cells outside the map take ``fill`` (the operator's padding); a missing view reads zeros.
    Works on channels-last cells (one cell's channels are contiguous): one gather from the
    view, then only the cells inside each query's patch are overwritten. The result is a
    channels-last ``[B, C, *size]`` tensor.
    """
    if patch is not None and _same_box(patch, origin, size):
        return patch.values
    if view is not None and view.device.type == "cpu" and view.shape[1] >= SLICED_CHANNELS:
        window = _sliced(view, image, origin, size, map_size, fill)
        if patch is not None:
            _overlay(window, patch, cells_of(origin, size))
        return window.permute(0, len(size) + 1, *range(1, len(size) + 1))
    cells = cells_of(origin, size)
    d = len(cells)
    if view is not None:
        index = [image.reshape([-1] + [1] * d)]
        index += [c.clamp(0, n - 1) for c, n in zip(cells, map_size)]
        window = _cells(view)[tuple(index)]  # [B, *size, C]
    else:
        assert patch is not None
        shape = (len(origin[0]), *size, patch.values.shape[1])
        window = torch.zeros(shape, device=image.device, dtype=patch.values.dtype)
    if patch is not None:
        _overlay(window, patch, cells)
    inside = None
    for c, n in zip(cells, map_size):
        within = (c >= 0) & (c < n)
        inside = within if inside is None else inside & within
    assert inside is not None
    if not bool(inside.all()):
        window[~inside.expand(window.shape[:-1])] = fill
    return window.permute(0, d + 1, *range(1, d + 1))


def _sliced(
    view: Tensor, image: Tensor, origin: Origin, size: Size, map_size: Size, fill: float
) -> Tensor:
    """``[B, *size, C]``: each query's box of its image's view, copied slice by slice (on a
    CPU, faster than one advanced-indexing gather for wide channels); cells outside the map
    take ``fill`` (the view is padded by what the boxes overhang)."""
    starts = [axis.tolist() for axis in origin]
    before = [max(0, -min(first)) for first in starts]
    after = [max(0, max(first) + side - n) for first, side, n in zip(starts, size, map_size)]
    if any(before) or any(after):
        widths = [w for b, a in zip(reversed(before), reversed(after)) for w in (b, a)]
        view = torch.nn.functional.pad(view, widths, value=fill)
    cells = _cells(view)
    window = torch.empty((len(image), *size, cells.shape[-1]), dtype=view.dtype)
    for b, source in enumerate(image.tolist()):
        read = tuple(slice(first[b] + pad, first[b] + pad + side)
                     for first, pad, side in zip(starts, before, size))  # fmt: skip
        window[b] = cells[(source, *read)]
    return window


def _cells(tensor: Tensor) -> Tensor:
    """``[N, C, *spatial]`` as ``[N, *spatial, C]`` (free for channels-last storage)."""
    d = tensor.dim() - 2
    return tensor.permute(0, *range(2, d + 2), 1)


def _same_box(patch: Patch, origin: Origin, size: Size) -> bool:
    return patch.size == size and all(torch.equal(p, o) for p, o in zip(patch.origin, origin))


def _overlay(window: Tensor, patch: Patch, cells: list[Tensor]) -> None:
    """Overwrite, in place, the window cells that lie in each query's patch."""
    local = [c - start.reshape(c.shape[:1] + (1,) * (c.dim() - 1)) for c, start in
             zip(cells, patch.origin)]  # fmt: skip
    inside = None
    for offsets, n in zip(local, patch.size):
        within = (offsets >= 0) & (offsets < n)
        inside = within if inside is None else inside & within
    assert inside is not None
    chosen = inside.expand(window.shape[:-1]).nonzero(as_tuple=True)
    b, positions = chosen[0], chosen[1:]
    source = [local[a].expand(window.shape[:-1])[chosen] for a in range(len(local))]
    window[(b, *positions)] = _cells(patch.values)[(b, *source)]


def gather_view(view: Tensor, image: Tensor, origin: Origin, size: Size) -> Tensor:
    """The view over each query's box (boxes always lie inside the map)."""
    return gather(view, None, image, origin, size, Size(*view.shape[2:]))


def read_origin(node: Node, origin: Origin) -> Origin:
    """Read-in window start ``x_R = x_O·S − P`` per axis of a window operator
    (``boxes.read_window``)."""
    assert isinstance(node.op, (JoinAggregate, Pool)) and node.update and node.update.box
    w, box = node.op.window, node.update.box
    return tuple(
        boxes.read_window(o, b, e, s, p)[0]
        for o, b, e, s, p in zip(origin, box, w.extent, w.stride, w.padding.before)
    )


def window_operands(
    node: Node, inputs: list[Value], env: Env
) -> tuple[Patch, Origin, Origin, Size]:
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
