"""The images a dataset job explains, as ``image_id`` / ``path`` / ``target`` rows: a folder, a
glob, a CSV or Parquet listing, or a list of paths."""

from __future__ import annotations

import csv
import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from compiler.errors import InvalidInputError
from krypton_ql import photos


def listing(images: Any) -> list[dict[str, Any]]:
    """The images to explain, as ``image_id`` / ``path`` / ``target`` rows: a folder, a glob, a
    CSV or Parquet file with a ``path`` column (and optionally ``target``), or a list of paths."""
    if isinstance(images, str | Path):
        text = str(images)
        path = Path(text)
        if path.is_dir():
            paths = [str(p) for p in photos.image_files(path)]
        elif path.suffix.lower() in (".csv", ".parquet") and path.is_file():
            return _table_listing(path)
        elif any(ch in text for ch in "*?["):
            paths = sorted(glob.glob(text, recursive=True))
        elif path.is_file():
            paths = [text]
        else:
            raise InvalidInputError(f"no such image folder, file or listing: {text}")
    elif isinstance(images, Sequence) and all(isinstance(p, str | Path) for p in images):
        paths = [str(p) for p in images]
    else:
        raise InvalidInputError(
            "images must be a folder, a glob, a CSV/Parquet listing or a list of paths, got "
            f"{type(images).__name__}"
        )
    if not paths:
        raise InvalidInputError(f"no images in {images}")
    return [{"image_id": p, "path": p, "target": None} for p in paths]


def _table_listing(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as handle:
            records = list(csv.DictReader(handle))
    else:
        records = pq.read_table(path).to_pylist()
    if not records or "path" not in records[0]:
        raise InvalidInputError(f"{path} needs a 'path' column listing the image files")
    base = path.parent
    rows = []
    for number, record in enumerate(records, start=2):
        file = Path(str(record["path"]))
        target = record.get("target")
        if target in ("", None):
            target = None
        else:
            try:
                target = int(target)
            except (TypeError, ValueError):
                raise InvalidInputError(
                    f"{path}, row {number}: target must be a class number, got {target!r}"
                ) from None
        resolved = file if file.is_absolute() else base / file
        rows.append({"image_id": str(record["path"]), "path": str(resolved), "target": target})
    return rows
