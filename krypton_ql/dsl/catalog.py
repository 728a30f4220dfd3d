"""The session's catalog: models, image sets and user tables.

A model is a registered module (or the built-in one, loaded on first use) with an optional
transform for raw photos and class names; an image set holds tensors in the model's input
space (signals ``[C, L]``, images ``[C, H, W]``, volumes ``[C, D, H, W]``), arrays from NIfTI and
``.npy`` files (read as they are: ``krypton_ql.volumes``), or photos (files, the sample photos)
that the model's transform reads when a statement needs them; a user table is registered in the
session's DuckDB.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from torch import Tensor, nn

from compiler.errors import InvalidInputError
from krypton_ql.dsl.engine import Engine
from krypton_ql.dsl.errors import QueryError
from krypton_ql.photos import PhotoFile, image_files
from krypton_ql.volumes import VolumeFile, is_volume, stem, volume_files

log = logging.getLogger(__name__)

Transform = Callable[[Any], Tensor]
_READERS = {".csv": "read_csv_auto", ".tsv": "read_csv_auto", ".parquet": "read_parquet"}


@dataclass
class Model:
    module: nn.Module | None
    transform: Transform | None
    classes: Sequence[str] | None
    loader: Callable[[], nn.Module] | None = None
    profile: Any = None  # a krypton_ql.Profile that ssim => … queries read

    def get(self) -> nn.Module:
        if self.module is None:
            assert self.loader is not None
            self.module = self.loader()
        return self.module


@dataclass
class Images:
    """Named images: tensors in model input space, or raw photos the model's transform reads."""

    items: dict[str, Any] = field(default_factory=dict)
    raw: bool = False
    generation: int = 0  # changes when the name is registered again


def versions(images: Images, names: Sequence[str]) -> tuple[Any, ...]:
    """A key of the named images as they are now: a tensor's in-place version, a file's size
    and modification time (a cache keyed by it never serves rows of changed images)."""
    from krypton_ql import fingerprint

    def version(item: Any) -> Any:
        if isinstance(item, Tensor):
            return fingerprint.tensor_version(item)
        if isinstance(item, PhotoFile | VolumeFile):
            return fingerprint.file_stamp(item.path)
        return fingerprint.name_of(item)

    return tuple(version(images.items[name]) for name in names)


def image_set(images: Any) -> Images:
    """A batch tensor ``[N, C, H, W]`` or ``[N, C, D, H, W]`` or a list of tensors ``[C,
    *spatial]`` (named by index), or image, NIfTI or ``.npy`` files or a folder of them (named
    by file stem)."""
    if isinstance(images, Tensor):
        if images.dim() not in (4, 5):
            raise InvalidInputError(
                "an image tensor is a batch: [N, C, H, W] images or [N, C, D, H, W] volumes, got "
                f"shape {list(images.shape)} (one input: a list of one tensor; signals [C, L]: "
                "a list of them)"
            )
        return Images({str(i): images[i] for i in range(len(images))})
    if isinstance(images, (str, Path)) and Path(images).is_dir():
        files = sorted(image_files(Path(images)) + volume_files(Path(images)))
        if not files:
            raise InvalidInputError(f"no image, NIfTI or .npy files in {images}")
        return Images(_by_stem(files), raw=True)
    if isinstance(images, (list, tuple)) and images and all(isinstance(i, Tensor) for i in images):
        return Images({str(i): t for i, t in enumerate(images)})
    if isinstance(images, (list, tuple, str, Path)):
        paths = [Path(p) for p in ([images] if isinstance(images, (str, Path)) else images)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing or not paths:
            raise InvalidInputError(f"no such image files: {missing or paths}")
        return Images(_by_stem(paths), raw=True)
    raise InvalidInputError(
        "register_images takes a tensor [N, C, *spatial], a list of tensors, image, NIfTI or "
        ".npy files, or a folder of them"
    )


def _by_stem(paths: list[Path]) -> dict[str, Any]:
    """Photo loaders named by file stem; two files with one stem are an error naming both."""
    named: dict[str, Any] = {}
    first: dict[str, Path] = {}
    for path in paths:
        name = stem(path)
        if name in first:
            raise InvalidInputError(
                f"two image files are both named {name!r}: {first[name]} and {path} "
                "(images are named by file stem; rename one)"
            )
        first[name] = path
        named[name] = VolumeFile(path) if is_volume(path) else PhotoFile(path)
    return named


def load(images: Images, name: str, model: Model, text: str) -> Tensor:
    """Image ``name`` as the model's input: a tensor or an array file as it is, a photo through
    the model's transform (errors point at the statement ``text``)."""
    item = images.items[name]
    if not images.raw:
        return item
    if isinstance(item, VolumeFile):
        try:
            return item()
        except InvalidInputError as error:
            raise QueryError(f"image {name!r}: {error}", text, 0) from None
    if model.transform is None:
        raise QueryError(
            "this model has no transform for image files; register it with transform=…", text, 0
        )
    try:
        photo = item() if callable(item) else item
        image = model.transform(photo)
    except Exception as error:  # user code or an unreadable file
        raise QueryError(
            f"image {name!r} could not be loaded and transformed: {error}", text, 0
        ) from error
    if not isinstance(image, Tensor):
        raise QueryError(
            f"the model's transform returned {type(image).__name__}, not a tensor", text, 0
        )
    return image


def register_table(engine: Engine, name: str, data: Any) -> None:
    """``data`` as the table ``name``: a pandas or polars DataFrame or an Arrow table is
    registered (read in place), a CSV or Parquet file copied into the database."""
    if not isinstance(name, str) or not name.isidentifier():
        raise InvalidInputError(f"a table name is an identifier, got {name!r}")
    engine.connection.unregister(name)
    if isinstance(data, (str, Path)):
        path = Path(data)
        reader = _READERS.get(path.suffix.lower())
        if reader is None or not path.is_file():
            raise InvalidInputError(
                f"register_table reads an existing .csv, .tsv or .parquet file, got {data}"
            )
        quoted = '"' + name.replace('"', '""') + '"'
        engine.query(f"CREATE OR REPLACE TABLE {quoted} AS SELECT * FROM {reader}(?)", [str(path)])
        return
    if hasattr(data, "to_arrow") and not isinstance(data, pa.Table):  # polars
        data = data.to_arrow()
    if not isinstance(data, pa.Table) and not _is_dataframe(data):
        raise InvalidInputError(
            "register_table takes a pandas or polars DataFrame, an Arrow table, or a "
            f".csv/.parquet path, got {type(data).__name__}"
        )
    engine.connection.register(name, data)


def _is_dataframe(data: Any) -> bool:
    return type(data).__module__.split(".")[0] == "pandas" and hasattr(data, "columns")
