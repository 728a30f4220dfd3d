"""Regions of any shape: a query's update is the set of cells of one label (a superpixel, a
feature of Captum's ``feature_mask``, an object) inside the label's bounding box.

An incremental plan needs one update box size per plan, so regions are grouped into
**buckets** by box size: along each axis a region's bounding-box side is rounded up to the next
side of a ladder (``ladder``: sides with few significant bits, at most a ratio ``r`` apart —
1, 2, 3, 4, 6, 8, 12, 16, 24, … for r = 1.5), and buckets are then merged, the pair that adds
the fewest cells first, down to ``max_plans``. Every region of a bucket runs in one plan whose
patch is the bucket's box, placed to contain the region's bounding box (moved back from the
border where it would cross it). Cells of the box outside the region keep their values, so a
larger box is exact and only costs work: ``Buckets.waste`` is the share of the boxes' cells
beyond the bounding boxes. Fewer plans cost fewer compiles and batch setups and more wasted
cells; ``benchmarks/ablation.py`` measures the trade-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from compiler.errors import InvalidInputError

DEFAULT_RATIO = 1.5
# Plans per label image at most: each plan pays a compile and the setup of its batches, worth
# tens of queries on a CPU, so buckets are merged (the pair that adds the fewest cells first)
# down to this many; ``benchmarks/ablation.py`` measures the trade-off.
DEFAULT_MAX_PLANS = 4


@dataclass(frozen=True)
class Regions:
    """The regions of one label image: each label's id, bounding box (first cell and size per
    spatial axis) and number of cells."""

    ids: np.ndarray  # [S] the labels, ascending
    starts: tuple[np.ndarray, ...]  # per spatial axis: [S] first cell of the bounding box
    sizes: tuple[np.ndarray, ...]  # per spatial axis: [S] side of the bounding box
    cells: np.ndarray  # [S] cells (over every channel the labels have) of each region

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray) -> Regions:
        """The regions whose label is in ``keep``.

        >>> regions_of(np.array([[0, 1], [2, 2]]), 2).subset(np.array([2, 0])).ids.tolist()
        [0, 2]
        """
        chosen = np.isin(self.ids, keep)
        return Regions(
            self.ids[chosen],
            tuple(a[chosen] for a in self.starts),
            tuple(a[chosen] for a in self.sizes),
            self.cells[chosen],
        )


def regions_of(labels: np.ndarray, spatial: int) -> Regions:
    """The regions of an integer label array whose last ``spatial`` axes are spatial (leading
    axes, such as channels, are folded: a region's box covers its cells in every channel).

    >>> r = regions_of(np.array([[0, 0, 1], [2, 0, 1]]), 2)
    >>> r.ids.tolist(), [s.tolist() for s in r.starts], [s.tolist() for s in r.sizes]
    ([0, 1, 2], [[0, 0, 1], [0, 2, 0]], [[2, 2, 1], [2, 1, 1]])
    >>> r.cells.tolist()
    [3, 2, 1]
    """
    from scipy import ndimage

    array = np.asarray(labels)
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise InvalidInputError(f"region labels must be integers, got {array.dtype}")
    ids, inverse = np.unique(array, return_inverse=True)
    numbered = inverse.reshape(array.shape) + 1
    boxes = ndimage.find_objects(numbered)
    lead = array.ndim - spatial
    starts = tuple(np.array([box[lead + a].start for box in boxes]) for a in range(spatial))
    sizes = tuple(
        np.array([box[lead + a].stop - box[lead + a].start for box in boxes])
        for a in range(spatial)
    )
    return Regions(ids, starts, sizes, np.bincount(inverse.ravel(), minlength=len(ids)))


def ladder(extent: int, ratio: float = DEFAULT_RATIO) -> list[int]:
    """Box sides along an axis of ``extent`` cells: the numbers up to ``extent`` with at most
    ``b`` significant bits, ``b = 1 − log2(ratio − 1)`` rounded (ratio 2: powers of two; 1.5:
    1, 2, 3, 4, 6, 8, 12, 16, 24, …; 1.25: 1 … 8, 10, 12, 14, 16, 20, …), so that each side is
    at most ``ratio`` times the one before and every power of two is a side (block-shaped
    regions fit exactly); ``extent`` ends the ladder.

    >>> ladder(40), ladder(10, 2.0)
    ([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40], [1, 2, 4, 8, 10])
    >>> ladder(20, 1.25)
    [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20]
    """
    if not ratio > 1:
        raise InvalidInputError(f"the bucket ratio must be > 1, got {ratio!r}")
    bits = max(1, round(1 - math.log2(min(ratio, 2.0) - 1)))
    return [*(n for n in range(1, extent) if _significant_bits(n) <= bits), extent]


def _significant_bits(n: int) -> int:
    """Bits from the highest set bit to the lowest: 12 (1100) has 2."""
    return n.bit_length() - (n & -n).bit_length() + 1


@dataclass(frozen=True)
class Bucket:
    """One plan's worth of regions: its box and which regions (indices into ``Regions``)."""

    box: tuple[int, ...]
    members: np.ndarray  # indices of the regions, ascending
    starts: tuple[np.ndarray, ...]  # per axis: [members] the box's first cell

    @property
    def area(self) -> int:
        return math.prod(self.box)


@dataclass(frozen=True)
class Buckets:
    """Regions grouped by box size (module docstring)."""

    buckets: tuple[Bucket, ...]
    bounding_cells: int  # cells of every region's bounding box, summed
    box_cells: int  # cells of every region's bucket box, summed

    @property
    def waste(self) -> float:
        """The share of the boxes' cells that lie outside the regions' bounding boxes."""
        return 1 - self.bounding_cells / self.box_cells if self.box_cells else 0.0

    def describe(self) -> str:
        """One line per bucket: its box and how many regions it runs, then the waste.

        >>> r = regions_of(np.array([[0, 0, 1], [2, 0, 1]]), 2)
        >>> print(bucketize(r, (2, 3)).describe())
        2×2: 1 region
        2×1: 1 region
        1×1: 1 region
        3 regions in 3 plans; boxes hold 0% more cells than the bounding boxes
        """
        lines = [
            f"{'×'.join(str(s) for s in b.box)}: {len(b.members)} region"
            + ("s" if len(b.members) != 1 else "")
            for b in self.buckets
        ]
        count = sum(len(b.members) for b in self.buckets)
        extra = self.box_cells / self.bounding_cells - 1 if self.bounding_cells else 0.0
        lines.append(
            f"{count} regions in {len(self.buckets)} plans; boxes hold {extra:.0%} more cells "
            "than the bounding boxes"
        )
        return "\n".join(lines)


def bucketize(
    regions: Regions,
    extent: tuple[int, ...],
    ratio: float = DEFAULT_RATIO,
    max_plans: int | None = DEFAULT_MAX_PLANS,
) -> Buckets:
    """Group ``regions`` of an input of ``extent`` cells per spatial axis by box size, the
    largest boxes first: sides rounded up the ``ladder`` of ``ratio``, then — while there are
    more than ``max_plans`` (None: no limit) — the two buckets whose merge (a box as large as
    both along every axis) adds the fewest cells are merged.

    >>> r = regions_of(np.array([[0, 0, 1], [2, 0, 1]]), 2)
    >>> for bucket in bucketize(r, (2, 3), max_plans=2).buckets:
    ...     print(bucket.box, bucket.members.tolist())
    (2, 2) [0]
    (2, 1) [1, 2]
    """
    steps = [np.asarray(ladder(n, ratio)) for n in extent]
    rounded = [
        step[np.searchsorted(step, size)] for step, size in zip(steps, regions.sizes)
    ]  # the smallest ladder side ≥ each bounding-box side
    keys: dict[tuple[int, ...], list[int]] = {}
    for index, box in enumerate(zip(*(r.tolist() for r in rounded))):
        keys.setdefault(tuple(box), []).append(index)
    if max_plans is not None and max_plans < 1:
        raise InvalidInputError(f"max_plans must be at least 1, got {max_plans!r}")
    while max_plans is not None and len(keys) > max_plans:
        _merge_cheapest(keys)
    buckets = []
    for box in sorted(keys, key=lambda b: (-math.prod(b), b)):
        members = np.asarray(keys[box])
        starts = tuple(
            np.clip(first[members], 0, n - side)
            for first, n, side in zip(regions.starts, extent, box)
        )
        buckets.append(Bucket(box, members, starts))
    bounding = int(np.sum(np.prod(np.stack(regions.sizes), axis=0))) if len(regions) else 0
    boxes = sum(b.area * len(b.members) for b in buckets)
    return Buckets(tuple(buckets), bounding, boxes)


def _merge_cheapest(keys: dict[tuple[int, ...], list[int]]) -> None:
    """Merge the two buckets of ``keys`` (box → members) whose union box adds the fewest
    cells over their members."""
    boxes = sorted(keys)
    best: tuple[int, tuple[int, ...], tuple[int, ...]] | None = None
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            union = tuple(max(x, y) for x, y in zip(a, b))
            size = math.prod(union)
            added = len(keys[a]) * (size - math.prod(a)) + len(keys[b]) * (size - math.prod(b))
            if best is None or added < best[0]:
                best = (added, a, b)
    assert best is not None
    _, a, b = best
    union = tuple(max(x, y) for x, y in zip(a, b))
    members = keys.pop(a) + keys.pop(b) + keys.pop(union, [])
    keys[union] = sorted(members)
