"""What ``kql query`` writes: each heatmap as ``.npy`` and as a picture over its input (exact
beside approximate with ``--compare-exact``), the rows as CSV and Parquet, staged beside the
output folder and moved in when all are written (a run leaves complete results or none).

A volume's heatmap is also written as NIfTI on the input's voxel grid with the input's affine
(each voxel: the window whose centre is nearest), to overlay on the scan in any NIfTI viewer,
and its picture is a montage of slices; a signal's is a strip under the signal."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def staging(out: Path) -> Path:
    """A fresh folder beside ``out`` that the results are written to first: a run leaves
    complete results in ``out`` or none (an unwritable ``out`` fails before the query)."""
    import tempfile

    from compiler.errors import InvalidInputError

    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as error:
        raise InvalidInputError(f"cannot write results to {out}: {error.strerror}") from None


def publish(staging: Path, out: Path) -> None:
    """Move the staged results into ``out`` (one rename when ``out`` is new)."""
    import os

    if not out.exists():
        staging.rename(out)
        return
    for path in staging.iterdir():
        os.replace(path, out / path.name)


def write_results(
    session: Any,
    module: Any,
    display: Any,
    result: Any,
    outline: Any,
    out: Path,
    exact: Any = None,
) -> tuple[list[Path], list[list[Any]]]:
    """Write each heatmap of ``result`` as ``.npy`` and a ``.png`` overlay on its image (and
    exact-vs-approximate pictures with ``exact``); returns the files and the rows with each
    heatmap replaced by its file name. ``outline``: what the statement computes
    (``krypton_ql.dsl.outline``)."""
    from torch import Tensor

    out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(session, module, display, result, outline, out)
    rows = []
    for index, row in enumerate(result.rows):
        cells: list[Any] = list(row)
        for column, value in enumerate(row):
            if isinstance(value, Tensor):
                other = exact.rows[index][column] if exact is not None else None
                cells[column] = writer.heatmap(index, row, column, value, other)
        rows.append(cells)
    return writer.written, rows


class _Writer:
    """``write_results``' state: where pictures go, the plan's geometry, and the clean scores
    of each image (one forward each)."""

    def __init__(
        self, session: Any, module: Any, display: Any, result: Any, outline: Any, out: Path
    ) -> None:
        from krypton_ql.integrations import segmentation

        self.session, self.module, self.display = session, module, display
        self.result, self.outline, self.out = result, outline, out
        plan = session.last_plan
        wrapper = getattr(plan, "model", None)  # a map-output model's region scores
        self.wrapper = wrapper if isinstance(wrapper, segmentation.RegionScores) else None
        occlusion = plan.occlusion if plan is not None else None
        self.geometry: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        if occlusion is not None:
            self.geometry = tuple(occlusion.patch), tuple(occlusion.stride)
        columns = result.columns
        self.image_column = columns.index("image") if "image" in columns else None
        self.class_column = columns.index("class") if "class" in columns else None
        self.clean: dict[str, Any] = {}  # image → clean class probabilities
        self.written: list[Path] = []

    def heatmap(self, index: int, row: tuple, column: int, value: Any, exact: Any) -> str:
        """Write one heatmap cell's files; the ``.npy`` name that stands for it in the row."""
        import numpy as np

        klass = row[self.class_column] if self.class_column is not None else None
        image = str(row[self.image_column]) if self.image_column is not None else str(index)
        name = self.result.columns[column]
        stem = _stem(image, klass, name, len(self.result.rows))
        np.save(self.out / f"{stem}.npy", value.numpy())
        self.written.append(self.out / f"{stem}.npy")
        picture = self.session.input_image(image) if self.image_column is not None else None
        labels = self.session.segments_of(image) if self.image_column is not None else None
        if picture is not None and labels is not None and tuple(value.shape) == tuple(labels.shape):
            if value.dim() == 2 and picture.dim() == 3:
                self._segments(stem, image, row, name, picture, value, labels)
        elif picture is not None and self.geometry is not None:
            if value.dim() == 3 and picture.dim() == 4:
                self._volume(stem, image, row, name, picture, value)
            elif value.dim() == 1 and picture.dim() == 2:
                self._signal(stem, image, row, name, picture, value)
            elif value.dim() == 2 and picture.dim() == 3:
                self._pictures(stem, image, row, name, picture, value, exact)
        return f"{stem}.npy"

    def _base(self, image: str, picture: Any, row: tuple, name: str) -> float | None:
        """The clean score a heatmap's colours are relative to (``_clean_score``)."""
        scores = self._clean_scores(image, picture)
        return _clean_score(self.outline, name, scores, row, self.class_column)

    def _title(self, image: str, row: tuple, name: str) -> str:
        if self.class_column is not None:
            return f"{image}, class {row[self.class_column]}: {name}"
        return f"{image}: {name}"

    def _volume(
        self, stem: str, image: str, row: tuple, name: str, picture: Any, value: Any
    ) -> None:
        """A volume heatmap as NIfTI on the input's grid (with its affine) and a montage."""
        import numpy as np

        from krypton_ql import render, volumes

        assert self.geometry is not None
        patch, stride = self.geometry
        source = self.session.input_source(image)
        affine = source.affine if isinstance(source, volumes.VolumeFile) else np.eye(4)
        voxels = volumes.on_input_grid(value, tuple(picture.shape[1:]), patch, stride)
        self.written.append(volumes.write_nifti(self.out / f"{stem}.nii.gz", voxels, affine))
        base, title = self._base(image, picture, row, name), self._title(image, row, name)
        self.written.append(render.montage_png(self.out / f"{stem}.png", picture, value, base,
                                               title, patch, stride))  # fmt: skip

    def _signal(
        self, stem: str, image: str, row: tuple, name: str, picture: Any, value: Any
    ) -> None:
        from krypton_ql import render

        assert self.geometry is not None
        (patch,), (stride,) = self.geometry
        base, title = self._base(image, picture, row, name), self._title(image, row, name)
        self.written.append(render.signal_png(self.out / f"{stem}.png", picture, value, base,
                                              title, patch, stride))  # fmt: skip

    def _pictures(
        self, stem: str, image: str, row: tuple, name: str, picture: Any, value: Any, exact: Any
    ) -> None:
        from krypton_ql import render

        assert self.geometry is not None
        scores = self._clean_scores(image, picture)
        base = _clean_score(self.outline, name, scores, row, self.class_column)
        region = None
        if self.wrapper is not None:
            chosen = row[self.class_column] if self.class_column is not None else scores.argmax()
            region = self.wrapper.weights[0, int(chosen)] > 0
        title = self._title(image, row, name)
        photo = self.display(picture)
        self.written.append(render.overlay_png(self.out / f"{stem}.png", photo, value, base,
                                               title, *self.geometry, region=region))  # fmt: skip
        if exact is not None:
            self.written.append(render.comparison_png(
                self.out / f"{stem}_vs_exact.png", photo, exact, value, base,
                ("exact", "approximate"), *self.geometry, region=region,
            ))  # fmt: skip

    def _segments(
        self, stem: str, image: str, row: tuple, name: str, picture: Any, value: Any, labels: Any
    ) -> None:
        """A segment heatmap: the photo with its segments outlined beside the painted values."""
        from krypton_ql import render

        base, title = self._base(image, picture, row, name), self._title(image, row, name)
        self.written.append(render.segments_png(self.out / f"{stem}.png", self.display(picture),
                                                value, labels, base, title))  # fmt: skip

    def _clean_scores(self, image: str, picture: Any) -> Any:
        import torch

        if image not in self.clean:
            with torch.no_grad():
                if self.wrapper is not None:  # region scores: probabilities already (or logits)
                    self.clean[image] = self.wrapper(picture[None]).float()[0]
                else:
                    self.clean[image] = torch.softmax(self.module(picture[None]).float(), 1)[0]
        return self.clean[image]


def _stem(image: str, klass: Any, column: str, rows: int) -> str:
    """A heatmap's file name: image, class (when the row has one and several rows could
    share the image) and column, in characters any file system takes."""
    parts = [image] + ([f"class{klass}"] if klass is not None and rows > 1 else []) + [column]
    return "_".join(re.sub(r"[^\w.-]+", "-", p).strip("-") for p in parts)


def _clean_score(
    outline: Any, column: str, probabilities: Any, row: tuple, class_column: int | None
) -> float | None:
    """The clean probability a probability heatmap's colours are relative to (the paper's
    convention): of the row's class, or of the prediction when the query names no class;
    None (colour by the heatmap's own range) for other heatmaps or an unknown class."""
    heatmap = outline.heatmap(column)
    if heatmap is None or heatmap.of != "prob":
        return None
    if class_column is not None:
        return float(probabilities[int(row[class_column])])
    if any(scan.names_classes for scan in outline.scans):
        return None
    return float(probabilities.max())
