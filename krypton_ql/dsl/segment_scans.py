"""Segment scans: ``occlusion(images, model, segments => 'slic', n_segments => 100)``.

Each image is cut into segments — by a scikit-image method run on the model input
(``krypton_ql.segments.segment``), or by label images registered with
``Session.register_segments`` — and each segment is hidden in turn, computed incrementally by
``krypton_ql.plans.regions.ablate`` (segments grouped into plans by their bounding boxes' size).

Rows: one per image × class × segment, in that order (segments by ascending label). Columns:
``image`` VARCHAR, ``segment`` (the label), ``area`` (its pixels), ``z``/``y``/``x`` (its
bounding box's first pixel along a volume's first axis, down and across; 0 on absent axes),
``depth``/``height``/``width`` (the box's size; 1 on absent axes), ``class`` BIGINT, ``label``
VARCHAR, ``prob``, ``base_prob``, ``drop`` FLOAT (float32, ``drop = base_prob - prob``).
``heatmap(v)`` paints each segment's pixels with its row's ``v`` (NaN on segments with no row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from compiler.errors import InvalidInputError
from compiler.regions import DEFAULT_MAX_PLANS, DEFAULT_RATIO, Regions, bucketize, regions_of
from krypton_ql import segments
from krypton_ql.dsl.bind import SEGMENTATION, Scan
from krypton_ql.dsl.parse import Statement, fail
from krypton_ql.dsl.scans import Relation

SCHEMA = pa.schema(
    [("image", pa.string()), ("segment", pa.int64()), ("area", pa.int64())]
    + [(name, pa.int64()) for name in ("z", "y", "x", "depth", "height", "width", "class")]
    + [("label", pa.string())]
    + [(name, pa.float32()) for name in ("prob", "base_prob", "drop")]
)
_BUCKETING = frozenset({"bucket_ratio", "max_plans"})
_GEOMETRY = ("image", "segment", "area", "z", "y", "x", "depth", "height", "width")


def empty() -> pa.Table:
    return SCHEMA.empty_table()


def bucketing(scan: Scan) -> tuple[float, int | None]:
    """The call's ``bucket_ratio`` and ``max_plans`` (``compiler.regions.bucketize``)."""
    ratio = scan.options.get("bucket_ratio", DEFAULT_RATIO)
    plans = scan.options.get("max_plans", DEFAULT_MAX_PLANS)
    return ratio, plans


def method_options(scan: Scan) -> dict[str, Any]:
    """The segmentation method's own keyword arguments of the call."""
    return {k: v for k, v in scan.options.items() if k in SEGMENTATION - _BUCKETING}


def label_images(
    scan: Scan,
    statement: Statement,
    names: Sequence[str],
    images: Tensor,
    registered: Mapping[str, Mapping[str, Tensor]],
    made: dict[Any, Tensor],
    versions: Sequence[Any],
) -> list[Tensor]:
    """Each image's labels ``[*spatial]``: from the registered segments the call names, or
    made by a scikit-image method on the model input (``made`` keeps them per image version,
    method and parameters)."""
    name = scan.options["segments"]
    node = scan.option_nodes["segments"]
    spatial = tuple(images.shape[2:])
    if name in registered:
        found = registered[name]
        labels: list[Tensor] = []
        for image in names:
            if image not in found and "*" not in found:
                raise fail(f"the segments {name!r} have no label image for image {image!r}",
                           node, statement.text)  # fmt: skip
            labels.append(found[image] if image in found else found["*"])
    elif name in segments.METHODS:
        if images.dim() != 4:
            raise fail(
                f"{name} segments pictures [C, H, W]: register label images for inputs of "
                f"{images.dim() - 2} spatial axes (Session.register_segments)",
                node,
                statement.text,
            )
        parameters = method_options(scan)
        labels = []
        for image, picture, version in zip(names, images, versions):
            key = (image, version, tuple(picture.shape), name, tuple(sorted(parameters.items())))
            if key not in made:
                try:
                    made[key] = segments.segment(picture, name, **parameters)
                except (TypeError, ValueError) as error:  # scikit-image's parameter checks
                    raise fail(f"{name}: {error}", node, statement.text) from None
                while len(made) > 256:
                    made.pop(next(iter(made)))
            labels.append(made[key])
    else:
        known = ", ".join(segments.METHODS + tuple(registered))
        raise fail(f"unknown segments {name!r} (methods and registered segments: {known})",
                   node, statement.text)  # fmt: skip
    for image, label in zip(names, labels):
        if tuple(label.shape) != spatial:
            raise fail(
                f"the segments of image {image!r} are {list(label.shape)}, the model input's "
                f"spatial axes are {list(spatial)}",
                node,
                statement.text,
            )
    return labels


def register(labels: Any) -> dict[str, Tensor]:
    """``Session.register_segments``' argument as image name → labels: a mapping of image
    names to label images, or one label image for every image (key ``"*"``)."""
    if isinstance(labels, Mapping):
        if not labels:
            raise InvalidInputError("register_segments needs at least one label image")
        return {str(k): _label_image(v, str(k)) for k, v in labels.items()}
    return {"*": _label_image(labels, "every image")}


def _label_image(value: Any, image: str) -> Tensor:
    from krypton_ql import volumes

    if isinstance(value, str) or hasattr(value, "__fspath__"):
        value = volumes.read_labels(value)
    try:
        labels = segments.from_labels(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"the label image of {image} is not an integer array") from None
    if labels.dim() not in (1, 2, 3) or labels.numel() == 0:
        raise InvalidInputError(
            f"the label image of {image} must have 1 to 3 non-empty axes, got {list(labels.shape)}"
        )
    return labels


def geometry(names: Sequence[str], labels: Sequence[Tensor]) -> pa.Table:
    """One row per image × segment: the image, the label, its area and bounding box (what a
    segment predicate reads)."""
    parts: dict[str, list[Any]] = {name: [] for name in _GEOMETRY}
    for name, label in zip(names, labels):
        regions = regions_of(label.cpu().numpy(), label.dim())
        parts["image"].append(np.full(len(regions), name, dtype=object))
        parts["segment"].append(regions.ids.astype(np.int64))
        parts["area"].append(regions.cells.astype(np.int64))
        for column, values in _box(regions, label.dim()).items():
            parts[column].append(values)
    return pa.table({
        name: pa.array(np.concatenate(parts[name]) if parts[name] else [],
                       type=SCHEMA.field(name).type)
        for name in _GEOMETRY
    })  # fmt: skip


def kept(names: Sequence[str], table: pa.Table, mask: np.ndarray | None) -> list[np.ndarray] | None:
    """Per image, the labels a segment pushdown ``mask`` (over ``geometry``'s rows) keeps."""
    if mask is None:
        return None
    images = np.asarray(table.column("image").to_pylist(), dtype=object)
    ids = table.column("segment").to_numpy()
    return [ids[mask & (images == name)] for name in names]


def compute(
    module: torch.nn.Module,
    images: Tensor,
    labels: Sequence[Tensor],
    classes: tuple[int, ...] | None,
    scan: Scan,
    progress: Any,
    only: list[np.ndarray] | None = None,
) -> tuple[list[Any], int]:
    """Every segment of each image hidden in turn, per class (None: each image's prediction):
    the ``AblationResult`` of each class and the queries run."""
    from krypton_ql.plans.regions import ablate

    ratio, plans = bucketing(scan)
    stacked = torch.stack(list(labels))[:, None]
    results = []
    keywords = {k: scan.options[k] for k in ("color", "score", "batch_size", "backend")
                if k in scan.options}  # fmt: skip
    if "color" in keywords and isinstance(keywords["color"], int | float):
        keywords["color"] = float(keywords["color"])
    for target in classes if classes is not None else (None,):
        results.append(ablate(module, images, stacked, target=target, ratio=ratio,
                              max_plans=plans, progress=progress, only=only,
                              **keywords))  # fmt: skip
    return results, sum(r.queries for r in results)


def build(
    names: Sequence[str],
    results: Sequence[Any],
    labels: Sequence[Tensor],
    classes: Sequence[str] | None,
    only: list[np.ndarray] | None = None,
) -> Relation:
    """The relation of ``compute``'s results: image × class × segment (``only``: per image,
    the segments computed)."""
    spatial = labels[0].dim()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SCHEMA.names}
    image_index: list[np.ndarray] = []
    segment_ids: list[np.ndarray] = []
    for n, (name, label) in enumerate(zip(names, labels)):
        regions = regions_of(label.cpu().numpy(), spatial)
        if only is not None:
            regions = regions.subset(only[n])
        if not len(regions):  # every segment of this image filtered out: no rows
            continue
        box = _box(regions, spatial)
        for result in results:
            where = np.searchsorted(result.ids.numpy(), regions.ids)
            prob = result.scores[n, 0].float().cpu().numpy()[where].astype(np.float32)
            base = np.float32(result.base[n, 0].float().item())
            klass = int(result.targets[n, 0])
            count = len(regions)
            parts["image"].append(np.full(count, name, dtype=object))
            parts["segment"].append(regions.ids.astype(np.int64))
            parts["area"].append(regions.cells.astype(np.int64))
            for column, values in box.items():
                parts[column].append(values)
            parts["class"].append(np.full(count, klass, dtype=np.int64))
            named = classes[klass] if classes is not None and klass < len(classes) else str(klass)
            parts["label"].append(np.full(count, named, dtype=object))
            parts["prob"].append(prob)
            parts["base_prob"].append(np.full(count, base, dtype=np.float32))
            parts["drop"].append(base - prob)
            image_index.append(np.full(count, n, dtype=np.int64))
            segment_ids.append(regions.ids.astype(np.int64))
    columns = {
        name: pa.array(
            np.concatenate(parts[name]) if parts[name] else [], type=SCHEMA.field(name).type
        )
        for name in SCHEMA.names
    }
    table = pa.table(columns, schema=SCHEMA)
    return Relation(
        table,
        np.concatenate(image_index) if image_index else np.zeros(0, dtype=np.int64),
        np.concatenate(segment_ids) if segment_ids else np.zeros(0, dtype=np.int64),
    )


def _box(regions: Regions, spatial: int) -> dict[str, np.ndarray]:
    """Each region's bounding box as the relation's columns (absent axes: first pixel 0, size 1)."""
    count = len(regions)
    axes = (("z", "depth"), ("y", "height"), ("x", "width"))[3 - spatial :]
    columns = {"z": np.zeros(count, np.int64), "y": np.zeros(count, np.int64),
               "x": np.zeros(count, np.int64), "depth": np.ones(count, np.int64),
               "height": np.ones(count, np.int64), "width": np.ones(count, np.int64)}  # fmt: skip
    for (first, size), start, side in zip(axes, regions.starts, regions.sizes):
        columns[first], columns[size] = start.astype(np.int64), side.astype(np.int64)
    return columns


def describe(
    scan: Scan,
    names: Sequence[str],
    labels: Sequence[Tensor],
    only: list[np.ndarray] | None = None,
) -> str:
    """The plans a segment scan runs: its segmentation, then per image its buckets (box size
    and segment count) and the wasted area, without running anything."""
    ratio, plans = bucketing(scan)
    parameters = ", ".join(f"{k}={v!r}" for k, v in sorted(method_options(scan).items()))
    method = scan.options["segments"]
    source = (
        f"{method}({parameters}) of each model input" if method in segments.METHODS
        else f"registered label images {method!r}"
    )  # fmt: skip
    lines = [
        "== segments ==",
        f"segmentation: {source}",
        f"bucketing: box sides {ratio}× apart at most, {plans or 'any number of'} plans "
        "at most per image",
    ]
    if only is not None:
        filters = " AND ".join(p.sql() for p in scan.position_filters)
        lines.append(f"segments computed: those where {filters}")
    for n, (name, label) in enumerate(zip(names, labels)):
        regions = regions_of(label.cpu().numpy(), label.dim())
        total = len(regions)
        if only is not None:
            regions = regions.subset(only[n])
        buckets = bucketize(regions, tuple(label.shape), ratio, plans)
        counted = f"{len(regions)} of {total}" if only is not None else f"{total}"
        lines.append(f"{name}: {counted} segments")
        lines.extend(f"  {line}" for line in buckets.describe().splitlines())
    lines.append(
        "each plan hides its segments one per query: the segment's pixels take the colour, the "
        "rest of its box keeps the image; exact incremental inference (compiler.regions)"
    )
    return "\n".join(lines) + "\n"
