"""An independent oracle for occlusion heatmaps: plain loops and plain ``model(batch)`` calls.

It imports nothing from ``krypton_ql``, ``compiler`` or ``runtime`` — not even their argument
checks or position grid — so a bug there cannot hide by being shared with the thing it checks.
It is deliberately naive: one occluded copy of the image per position, built by slice
assignment, run through the model in chunks.

Inputs have one, two or three spatial axes (a signal ``[C, L]``, an image ``[C, H, W]``, a
volume or clip ``[C, D, H, W]``), with a batch axis in front or not; ``patch`` and ``stride`` are
an int (along every axis) or one int per axis, whose count gives the number of axes
(``spatial_dims`` says it for int patches; without it an int patch means an image).

Semantics (Captum's ``Occlusion`` windows, the Zeiler–Fergus heatmap value):

- along a dimension of ``size`` cells with patch ``p`` and stride ``s`` the windows start at
  ``i·s`` for ``i = 0 … ceil((size − p)/s)``; a window that runs past the border is clipped
  (only its cells inside the image are occluded) and a window that would start at or past the
  border (possible when ``s > p``) is dropped;
- cell ``(i, j, …)`` is the target's softmax probability (``score="prob"``, computed in float64
  from the model's output) or its raw output (``score="logit"``) on the image with the
  window's pixels set to ``color`` (a number, or one number per channel);
- the target is the class the model predicts on the clean image unless given (an int for
  every image, or one per image).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

CHUNK = 64  # occluded images per forward


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start of every window along one dimension.

    >>> window_starts(10, 4, 3), window_starts(11, 4, 3), window_starts(6, 1, 4)
    ([0, 3, 6], [0, 3, 6, 9], [0, 4])
    """
    count = 1 + math.ceil((size - patch) / stride)
    return [i * stride for i in range(count) if i * stride < size]


def _axes(value: int | Sequence[int], d: int) -> tuple[int, ...]:
    return (value,) * d if isinstance(value, int) else tuple(int(v) for v in value)


def rank(patch: int | Sequence[int], spatial_dims: int | None = None) -> int:
    """The number of spatial axes: stated, else the patch's length, else an image's 2."""
    if spatial_dims is not None:
        return spatial_dims
    return 2 if isinstance(patch, int) else len(patch)


@dataclass(frozen=True)
class Content:
    """What a window holds besides a colour, in plain terms: each occluded cell becomes
    ``x·mul + add + baseline`` — ``mul`` and ``add`` tensors over the window (read from its
    first cell; None: 0), ``baseline`` a tensor over the input (``[C or 1, *spatial]``, or
    with a batch axis one per input; None: 0) — or with ``by_mean`` ``x`` times the mean of
    the window's cells over every channel."""

    mul: Tensor | None = None
    add: Tensor | None = None
    baseline: Tensor | None = None
    by_mean: bool = False


def occluded_copies(
    image: Tensor,
    patch: int | Sequence[int],
    stride: int | Sequence[int],
    color,
    content: Content | None = None,
) -> tuple[Tensor, tuple[int, ...]]:
    """Every occluded copy of one ``[C, *spatial]`` input, row-major over the windows (the
    last axis fastest), and the number of windows along each axis."""
    d = image.dim() - 1
    patches, strides = _axes(patch, d), _axes(stride, d)
    channels = image.shape[0]
    fill = torch.as_tensor(color, dtype=image.dtype).reshape(-1, *([1] * d))
    if fill.shape[0] not in (1, channels):
        raise ValueError(f"color has {fill.shape[0]} values for {channels} channels")
    starts = [window_starts(n, p, s) for n, p, s in zip(image.shape[1:], patches, strides)]
    copies = []
    for corner in itertools.product(*starts):
        occluded = image.clone()
        cells = tuple(slice(c, c + p) for c, p in zip(corner, patches))  # slices clip
        region = occluded[(slice(None), *cells)]
        if content is None:
            region[...] = fill.expand(channels, *region.shape[1:])
        else:
            region[...] = _content(region.clone(), cells, content)
        copies.append(occluded)
    return torch.stack(copies), tuple(len(axis) for axis in starts)


def _content(region: Tensor, cells: tuple[slice, ...], content: Content) -> Tensor:
    """A window's new values under ``content`` (``region``: its clean values, clipped)."""
    if content.by_mean:
        return region * region.mean()
    extent = tuple(slice(0, n) for n in region.shape[1:])  # the clipped window's own cells
    value = torch.zeros_like(region)
    if content.mul is not None:
        mul = content.mul.to(region.dtype)
        value = region * (mul[(..., *extent)] if mul.dim() else mul)
    if content.add is not None:
        add = content.add.to(region.dtype)
        value = value + (add[(..., *extent)] if add.dim() else add)
    if content.baseline is not None:
        value = value + content.baseline.to(region.dtype)[(..., *cells)]
    return value


def _scores(outputs: Tensor, target: int, score: str) -> Tensor:
    """One class's score per row of raw outputs ``[..., K]`` (float64)."""
    outputs = outputs.double()
    if score == "prob":
        outputs = torch.softmax(outputs, dim=-1)
    elif score != "logit":
        raise ValueError(f"score must be 'prob' or 'logit', got {score!r}")
    return outputs[..., target]


def _in(model: nn.Module, image: Tensor, dtype: torch.dtype | None) -> tuple[nn.Module, Tensor]:
    if dtype is None:
        return model, image
    return copy.deepcopy(model).to(dtype), image.to(dtype)


@dataclass(frozen=True)
class Outputs:
    """What the model returns on clean and occluded copies of each image."""

    clean: Tensor  # [N, K]
    occluded: Tensor  # [N, *grid, K]

    def targets(self, target: int | Sequence[int] | None) -> list[int]:
        """The class of each image's heatmap: given, or predicted on the clean image."""
        if target is None:
            return [int(row.argmax()) for row in self.clean]
        if isinstance(target, int):
            return [target] * len(self.clean)
        return [int(t) for t in target]

    def heatmap(self, target: int | Sequence[int] | None = None, score: str = "prob") -> Tensor:
        """``[N, *grid]`` scores of each image's target (float64)."""
        chosen = self.targets(target)
        return torch.stack([_scores(o, t, score) for o, t in zip(self.occluded, chosen)])

    def clean_scores(self, target: int | Sequence[int] | None = None, score: str = "prob"):
        """``[N]`` scores of each image's target on the clean image (float64)."""
        chosen = self.targets(target)
        return torch.stack([_scores(c, t, score) for c, t in zip(self.clean, chosen)])


def run(
    model: nn.Module,
    image: Tensor,
    patch: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    color: float | Sequence[float] = 0.0,
    dtype: torch.dtype | None = None,
    spatial_dims: int | None = None,
    content: Content | None = None,
) -> Outputs:
    """The model's outputs on every input of ``[C, *spatial]`` or ``[N, C, *spatial]`` and on
    every occluded copy of it. ``dtype`` runs a converted copy of the model on inputs cast to
    it (the half-precision baseline); ``content`` replaces the colour (a baseline with a
    batch axis gives each input its row)."""
    model, image = _in(model, image, dtype)
    d = rank(patch, spatial_dims)
    images = image if image.dim() == d + 2 else image[None]
    clean, occluded = [], []
    with torch.no_grad():
        for n, picture in enumerate(images):
            own = content
            if content is not None and content.baseline is not None:
                rows = content.baseline.dim() == d + 2
                baseline = (
                    content.baseline[n if content.baseline.shape[0] > 1 else 0]
                    if rows
                    else content.baseline
                )
                own = Content(content.mul, content.add, baseline, content.by_mean)
            copies, grid = occluded_copies(picture, patch, stride, color, own)
            outputs = torch.cat([model(chunk) for chunk in copies.split(CHUNK)])
            occluded.append(outputs.double().reshape(*grid, -1))
            clean.append(model(picture[None])[0].double().reshape(-1))  # [N]: one class
    return Outputs(torch.stack(clean), torch.stack(occluded))


def heatmap(
    model: nn.Module,
    image: Tensor,
    patch: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    color: float | Sequence[float] = 0.0,
    target: int | Sequence[int] | None = None,
    score: str = "prob",
    dtype: torch.dtype | None = None,
    spatial_dims: int | None = None,
) -> Tensor:
    """The heatmap ``[*grid]`` of one ``[C, *spatial]`` input (``[N, *grid]`` of a batch), in
    float64."""
    d = rank(patch, spatial_dims)
    maps = run(model, image, patch, stride, color, dtype, d).heatmap(target, score)
    return maps if image.dim() == d + 2 else maps[0]


def clean_score(
    model: nn.Module,
    image: Tensor,
    target: int | None = None,
    score: str = "prob",
    dtype: torch.dtype | None = None,
) -> float:
    """The target's score on the clean ``[C, H, W]`` image (float64)."""
    model, image = _in(model, image, dtype)
    with torch.no_grad():
        outputs = model(image[None])[0].reshape(-1)
    return float(_scores(outputs, int(outputs.argmax()) if target is None else target, score))


def ablate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    baseline: float | Tensor = 0.0,
    target: int | Sequence[int] | None = None,
    score: str = "prob",
) -> tuple[list[int], Tensor]:
    """Region ablation by one full forward per image and label: the label ids (ascending) and
    ``[N, S]`` scores, the target's score with every element whose label is the id set to
    ``baseline`` (a number, or a tensor broadcast to ``images`` ``[N, C, *spatial]``), NaN
    where an image has no element of that id. ``labels`` broadcasts to ``images``."""
    labels = labels.reshape((1,) * (images.dim() - labels.dim()) + tuple(labels.shape))
    labels = labels.expand(images.shape)
    fill = torch.as_tensor(baseline, dtype=images.dtype).expand(images.shape)
    ids = sorted(int(v) for v in torch.unique(labels))
    scores = torch.full((len(images), len(ids)), float("nan"), dtype=torch.float64)
    with torch.no_grad():
        clean = model(images).double()
        for n in range(len(images)):
            chosen = int(clean[n].argmax()) if target is None else (
                target if isinstance(target, int) else int(target[n]))  # fmt: skip
            for s, label in enumerate(ids):
                where = labels[n] == label
                if not bool(where.any()):
                    continue
                copy_ = images[n].clone()
                copy_[where] = fill[n][where]
                output = model(copy_[None]).double()
                scores[n, s] = _scores(output, chosen, score)[0]
    return ids, scores
