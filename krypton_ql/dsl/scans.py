"""The occlusion relation of one scan as an Arrow table, and a session's cache of them.

Rows: one per image × class × computed position, in that order. Columns and types:
``image`` VARCHAR, ``row``/``col``/``y``/``x``/``slice``/``z``/``class`` BIGINT (the window's
grid index and first pixel along each axis: ``row``/``y`` down, ``col``/``x`` across, and
``slice``/``z`` along a volume's first axis — 0 for images and signals; a signal is one row,
``row`` = ``y`` = 0), ``label`` VARCHAR, ``prob``,
``base_prob``, ``drop`` FLOAT (float32, the dtype of ``kql.occlusion_heatmap``; ``drop`` is
``base_prob - prob`` in float32), ``ssim_estimate`` FLOAT (with ``ssim => …``: the quality
guard's estimate of the image's heatmap SSIM against exact, 1 where it ran exactly; else NULL).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SCHEMA = pa.schema(
    [
        ("image", pa.string()),
        ("row", pa.int64()),
        ("col", pa.int64()),
        ("y", pa.int64()),
        ("x", pa.int64()),
        ("slice", pa.int64()),
        ("z", pa.int64()),
        ("class", pa.int64()),
        ("label", pa.string()),
        ("prob", pa.float32()),
        ("base_prob", pa.float32()),
        ("drop", pa.float32()),
        ("ssim_estimate", pa.float32()),
    ]
)


@dataclass(frozen=True)
class Request:
    """What one scan computes: which images, classes (None: each image's predicted class or the
    ``target`` option) and positions (row-major grid indices, ascending) of a bound call."""

    key: Hashable  # the model (with its weights' versions), image set and options of the call
    names: tuple[str, ...]
    classes: tuple[int, ...] | None
    positions: np.ndarray
    versions: tuple[Hashable, ...] = ()  # each named image's version (catalog.versions)

    def covered_by(self, other: Request) -> bool:
        """Whether ``other``'s relation holds every row this request asks for (of the same
        images: none changed since)."""
        if self.key != other.key or not set(self.names) <= set(other.names):
            return False
        held = dict(zip(other.names, other.versions))
        if any(held.get(name) != version for name, version in zip(self.names, self.versions)):
            return False
        if (self.classes is None) != (other.classes is None):
            return False
        if self.classes is not None and not set(self.classes) <= set(other.classes or ()):
            return False
        return bool(np.isin(self.positions, other.positions).all())


@dataclass
class Relation:
    """A computed occlusion relation with the index columns a cache filters on."""

    table: pa.Table
    image: np.ndarray  # per row: the index of its image in the request's names
    position: np.ndarray  # per row: its grid index


def build(
    names: Sequence[str],
    targets: np.ndarray,
    scores: np.ndarray,
    base: np.ndarray,
    positions: np.ndarray,
    grid: dict[str, np.ndarray],
    labels: Sequence[str] | None,
    estimates: np.ndarray | None = None,
) -> Relation:
    """The relation of ``scores[N, T, P]`` (float32) at ``positions`` for ``targets[N, T]``;
    ``estimates[N, T]``: the quality guard's SSIM estimates (None: none)."""
    count, kinds, size = scores.shape
    shape = (count, kinds, size)

    def spread(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(np.expand_dims(values, axes), shape)).ravel()

    image_index = spread(np.arange(count), (1, 2))
    classes = spread(targets.astype(np.int64), (2,))
    names_array = np.asarray(list(names), dtype=object)
    named = [
        labels[c] if labels is not None and 0 <= c < len(labels) else str(c)
        for c in range(int(targets.max()) + 1 if targets.size else 0)
    ]
    base32 = spread(base.astype(np.float32), (2,))
    prob = np.ascontiguousarray(scores, dtype=np.float32).ravel()
    columns = {
        "image": pa.DictionaryArray.from_arrays(image_index, names_array).cast(pa.string()),
        "row": spread(grid["row"][positions], (0, 1)),
        "col": spread(grid["col"][positions], (0, 1)),
        "y": spread(grid["y"][positions], (0, 1)),
        "x": spread(grid["x"][positions], (0, 1)),
        "slice": spread(grid["slice"][positions], (0, 1)),
        "z": spread(grid["z"][positions], (0, 1)),
        "class": classes,
        "label": pa.DictionaryArray.from_arrays(classes, np.asarray(named, dtype=object)).cast(
            pa.string()
        ),
        "prob": prob,
        "base_prob": base32,
        "drop": base32 - prob,
        "ssim_estimate": (
            pa.nulls(count * kinds * size, pa.float32())
            if estimates is None
            else spread(estimates.astype(np.float32), (2,))
        ),
    }
    table = pa.table({name: columns[name] for name in SCHEMA.names}, schema=SCHEMA)
    return Relation(table, image_index, spread(positions.astype(np.int64), (0, 1)))


def empty() -> pa.Table:
    """The relation's schema with no rows (what a statement is validated against)."""
    return SCHEMA.empty_table()


class Cache:
    """Computed relations of a session, most recent last; a request is answered by the first
    relation that covers it, filtered to the request's images, classes and positions."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._entries: OrderedDict[int, tuple[Request, Relation]] = OrderedDict()
        self._next = 0

    def find(self, request: Request) -> pa.Table | None:
        for number, (held, relation) in reversed(self._entries.items()):
            if request.covered_by(held):
                self._entries.move_to_end(number)
                return _subset(request, held, relation)
        return None

    def add(self, request: Request, relation: Relation) -> None:
        self._entries[self._next] = (request, relation)
        self._next += 1
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _subset(request: Request, held: Request, relation: Relation) -> pa.Table:
    wanted = set(request.names)
    wanted_images = np.array([name in wanted for name in held.names], dtype=bool)
    mask = wanted_images[relation.image] & np.isin(relation.position, request.positions)
    if request.classes is not None:
        classes = relation.table.column("class").to_numpy()
        mask &= np.isin(classes, np.asarray(request.classes, dtype=np.int64))
    if mask.all():
        return relation.table
    return relation.table.filter(pa.array(mask))
