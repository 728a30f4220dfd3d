"""What an occluded window holds, beyond one colour.

A ``Fill`` gives each occluded cell ``x·mul + add``, where ``x`` is the cell's clean value:

- ``Fill.per_pixel(b)``: the cell takes a per-pixel baseline's value (Captum's tensor
  baselines, a blurred copy of the input): ``mul = 0``, ``add = b`` at the cell's own place in
  the input; ``b`` broadcasts to the input ``[N, C, *spatial]``;
- ``Fill.window(mul, add)``: a function of the window's own values, ``mul`` and ``add``
  numbers or tensors over the window ``[C or 1, *patch]``, indexed from the window's first
  cell (MONAI's ``gaussian``: ``mul = 1 − g`` with ``g`` a Gaussian over the window);
- ``Fill.scaled_by_mean()``: ``mul`` is the mean of the window's clean cells over every
  channel (MONAI 1.6's ``mean_patch``, which multiplies by the mean rather than replacing by
  it: see ``krypton_ql.integrations.monai``).

``in_regions(labels, ids)`` narrows any fill to a region of any shape: query ``q`` changes
only the cells of its window whose label is ``ids[q]`` (a superpixel, a feature of Captum's
``feature_mask``); the window's other cells keep their values (``compiler.regions``).

Only the input layer sees the content — every later layer takes the occluded input's change as
it takes a colour's — so no delta rule depends on it. A window clipped at the border keeps its
cells inside the input, indexed from its (unclipped) first cell.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from compiler.errors import InvalidInputError


@dataclass(frozen=True, eq=False)
class Fill:
    """The content of every occluded window (module docstring): ``x·mul + add + baseline``,
    ``mul`` and ``add`` over the window (``None``: 0), ``baseline`` over the input (``None``:
    0); with ``by_mean``, ``x·mean`` instead."""

    mul: Tensor | None = None  # [C or 1, *patch], indexed from the window's first cell
    add: Tensor | None = None  # [C or 1, *patch]
    baseline: Tensor | None = None  # [N or 1, C or 1, *spatial], at the cell's place
    by_mean: bool = False  # x · the mean of the window's clean cells over every channel
    labels: Tensor | None = None  # [N or 1, C or 1, *spatial] integer label of each cell
    ids: Tensor | None = None  # [positions] the label each position's query changes

    @classmethod
    def per_pixel(cls, values: Tensor) -> Fill:
        """Each occluded cell takes ``values`` at its place (broadcast to ``[N, C, *spatial]``;
        a tensor without the batch axis serves every input)."""
        if not isinstance(values, Tensor):
            raise InvalidInputError(f"a baseline must be a tensor, got {type(values).__name__}")
        return cls(baseline=values.detach())

    @classmethod
    def window(cls, mul: Tensor | float = 0.0, add: Tensor | float = 0.0) -> Fill:
        """Each occluded cell becomes ``x·mul + add``, both numbers or tensors over the window
        ``[C or 1, *patch]``."""
        return cls(_tensor("mul", mul), _tensor("add", add))

    @classmethod
    def scaled_by_mean(cls) -> Fill:
        """Each occluded cell becomes ``x·m``, ``m`` the mean of the window's clean cells."""
        return cls(by_mean=True)

    def in_regions(self, labels: Tensor, ids: Tensor) -> Fill:
        """This fill, only on the cells whose label (``labels``: integers broadcast to the
        input ``[N, C, *spatial]``) is the query's ``ids[position]``."""
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise InvalidInputError(f"region labels must be integers, got {labels.dtype}")
        return dataclasses.replace(self, labels=labels.detach(), ids=ids.detach().long())

    def check(self, shape: tuple[int, ...], patch: tuple[int, ...], count: int) -> None:
        """That the tensors fit inputs of per-input ``shape`` ``(C, *spatial)`` (``count`` of
        them) and windows of ``patch``."""
        channels, d = shape[0], len(patch)
        if self.baseline is not None:
            _broadcasts("baseline", self.baseline, (count, *shape), d + 2)
        if self.labels is not None:
            _broadcasts("the region labels", self.labels, (count, *shape), d + 2)
        for name, value in (("mul", self.mul), ("add", self.add)):
            if value is not None:
                _broadcasts(f"the window's {name}", value, (channels, *patch), d + 1)

    def select(self, index: Tensor | slice, d: int) -> Fill:
        """The fill of the inputs ``index`` picks, of ``d`` spatial axes (a baseline with a
        batch axis keeps their rows)."""

        def rows(values: Tensor | None) -> Tensor | None:
            if values is None or values.dim() != d + 2 or values.shape[0] == 1:
                return values
            return values[index]

        return dataclasses.replace(self, baseline=rows(self.baseline), labels=rows(self.labels))

    def cells(
        self,
        x: Tensor,
        image: Tensor,
        starts: tuple[Tensor, ...],
        cells: list[Tensor],
        covered: Tensor,
        position: Tensor | None = None,
    ) -> Tensor:
        """The occluded values of ``x`` ``[B, C, *box]``: query ``b``'s cells sit at
        ``cells[a]`` along each axis (broadcasting over ``[B, *box]``) of input ``image[b]``,
        its window starts at ``starts[a][b]``; ``covered`` ``[B, *box]`` marks the cells in the
        window (only those are read for the window's mean); ``position`` ``[B]``: each query's
        position (what a region fill reads its label from)."""
        value = self._content(x, image, starts, cells, covered)
        if self.labels is None:
            return value
        assert self.ids is not None and position is not None, "a region fill needs positions"
        ids = self.ids.to(x.device)[position.to(x.device)]
        label = _at(self.labels, image, cells, x, exact=True)
        inside = label == ids.reshape(-1, *([1] * (len(cells) + 1)))
        return torch.where(inside, value, x)

    def _content(
        self,
        x: Tensor,
        image: Tensor,
        starts: tuple[Tensor, ...],
        cells: list[Tensor],
        covered: Tensor,
    ) -> Tensor:
        d = len(cells)
        if self.by_mean:
            inside = covered[:, None].to(x.dtype)
            axes = tuple(range(1, d + 2))
            mean = (x * inside).sum(axes) / (inside.sum(axes) * x.shape[1]).clamp(min=1)
            return x * mean.reshape(-1, *([1] * (d + 1)))
        offsets = [c - s.reshape(-1, *([1] * d)) for c, s in zip(cells, starts)]
        value = x * _window_values(self.mul, offsets, x) + _window_values(self.add, offsets, x)
        if self.baseline is not None:
            value = value + _at(self.baseline, image, cells, x)
        return value


def _tensor(name: str, value: Tensor | float) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return torch.tensor(float(value))
    raise InvalidInputError(f"the window's {name} must be a number or a tensor, got {value!r}")


def _broadcasts(name: str, value: Tensor, shape: tuple[int, ...], rank: int) -> None:
    if value.dim() > rank:
        raise InvalidInputError(
            f"{name} has {value.dim()} axes; it must broadcast to {list(shape[-rank:])}"
        )
    try:
        np.broadcast_shapes(tuple(value.shape), shape[len(shape) - rank :])
    except ValueError:
        raise InvalidInputError(
            f"{name} of shape {list(value.shape)} does not broadcast to {list(shape[-rank:])}"
        ) from None


def _at(
    values: Tensor, image: Tensor, cells: list[Tensor], like: Tensor, exact: bool = False
) -> Tensor:
    """``values`` (``[N or 1, C or 1, *spatial]``, fewer leading axes broadcast) at each
    query's cells: ``[B, C, *box]`` (in ``like``'s dtype, or their own with ``exact``)."""
    d = len(cells)
    values = values.to(like.device) if exact else values.to(like.device, like.dtype)
    values = values.reshape((1,) * (d + 2 - values.dim()) + tuple(values.shape))
    which = image if values.shape[0] > 1 else torch.zeros_like(image)
    index = [which.reshape(-1, *([1] * d))]
    index += [c.clamp(0, n - 1) if n > 1 else torch.zeros_like(c) for c, n in
              zip(cells, values.shape[2:])]  # fmt: skip
    picked = values.movedim(1, -1)[tuple(index)]  # [B, *box, C or 1]
    return picked.movedim(-1, 1).expand(like.shape)


def _window_values(values: Tensor | None, offsets: list[Tensor], like: Tensor) -> Tensor:
    """``values`` over the window (``[C or 1, *patch]``, fewer leading axes broadcast) at each
    query's window offsets, ``[B, C, *box]``; offsets outside the window are clamped (those
    cells are not covered)."""
    if values is None:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    d = len(offsets)
    values = values.to(like.device, like.dtype)
    if values.dim() == 0:
        return values
    values = values.reshape((1,) * (d + 1 - values.dim()) + tuple(values.shape))
    index = [o.clamp(0, n - 1) if n > 1 else torch.zeros_like(o) for o, n in
             zip(offsets, values.shape[1:])]  # fmt: skip
    picked = values.movedim(0, -1)[tuple(index)]  # [B, *box, C or 1]
    return picked.movedim(-1, 1).expand_as(like)
