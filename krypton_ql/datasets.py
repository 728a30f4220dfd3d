"""Occlusion explanations of whole datasets: ``explain_dataset`` streams image files through one
compiled plan per image shape and writes one Parquet row per image, on this process
(``engine="local"``) or on a Ray cluster (``engine="ray"``: Ray Data's ``map_batches`` over an
actor pool, each actor building the model and its plans once).

    kql.explain_dataset("val/", "efficientnet_lite0", patch=16, stride=8, out="results/")

Output: a folder of Parquet files (one dataset; ``duckdb.sql("SELECT … FROM
'results/*.parquet'")`` or ``pyarrow.dataset`` read it), one row per image, columns
``SCHEMA``: ``image_id`` (the path as listed), ``path``, ``target`` and ``label`` (the class
explained: the listing's ``target`` column, else the ``target=`` option, else the prediction),
``score`` (its clean probability, or logit with ``score="logit"``), ``heatmap`` (the row-major
``float32`` cells) with ``heatmap_shape`` ``[rows, cols]``, ``queries`` (occlusion queries
run), ``seconds`` (this image's compute time) and ``error`` (null, or why the image has no
heatmap: it could not be decoded, did not fit the model, or raised a ``KryptonError``; the job
goes on). Re-running with the same ``out`` skips the images that already have a row (a job
can be restarted after a crash); ``overwrite=True`` starts afresh.

Both engines run the same ``Explainer`` on each image, so their heatmaps are identical. Ray is
an optional extra (``pip install krypton-ql[ray]``); the local engine never imports it.
"""

from __future__ import annotations

import csv
import glob
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from compiler.errors import InvalidInputError, KryptonError

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
    ]
)
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


@dataclass
class Explainer:
    """One worker: builds the model on first use, compiles one plan per image shape, and turns
    a batch of listed images (``image_id``, ``path``, ``target`` columns) into output rows. Ray
    Data runs it as a callable class on each actor; the local engine calls it in-process."""

    spec: ModelSpec
    options: dict[str, Any]
    threads: int | None = None  # torch's threads on a Ray actor: the CPUs it was given
    _model: Any = field(default=None, init=False, repr=False)
    _plans: dict[tuple[int, ...], Any] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, batch: Any) -> pa.Table:
        """Ray Data's entry: a pandas batch of listed images → their output rows."""
        rows = [
            self.explain(str(i), str(p), None if _missing(t) else int(t))
            for i, p, t in zip(batch["image_id"], batch["path"], batch["target"])
        ]
        return pa.Table.from_pylist(rows, schema=SCHEMA)

    def explain(
        self, image_id: str, path: str, target: int | None, image: Any = None
    ) -> dict[str, Any]:
        """One image's output row (its ``error`` set instead of raising for a bad image);
        ``image`` is its input when already decoded (or the error decoding it gave)."""
        started = time.perf_counter()
        row: dict[str, Any] = {name: None for name in SCHEMA.names}
        row.update(image_id=image_id, path=path, target=target)
        try:
            image = self.load(path) if image is None else image
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

    def load(self, path: str) -> Tensor | Exception:
        """The model's input for an image file (an exception, returned, when it cannot be)."""
        from krypton_ql.dsl import catalog

        try:
            photo = catalog._photo_loader(Path(path))()
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
            if self.threads is not None:
                torch.set_num_threads(self.threads)
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


def done(out: Path) -> set[str]:
    """The image ids that already have a row in ``out``."""
    files = sorted(out.glob("*.parquet")) if out.is_dir() else []
    ids: set[str] = set()
    for file in files:
        try:
            ids.update(pq.read_table(file, columns=["image_id"]).column(0).to_pylist())
        except (pa.ArrowInvalid, OSError):  # a part cut off mid-write: its images are redone
            log.warning("ignoring unreadable part %s (its images are explained again)", file)
    return ids


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
    **options: Any,
) -> Path:
    """Explain every image of ``images`` with ``model`` and write the rows to ``out`` (see the
    module docstring); returns ``out``. ``options`` are ``kql.compile``'s (``color``,
    ``score``, ``target``, ``tau``, ``precision``, …). ``engine="ray"`` runs on the cluster at
    ``address`` (or ``RAY_ADDRESS``, else a local Ray) with ``workers`` actors (default: one
    per CPU; each gets its share of the CPUs as torch threads) of
    ``gpus_per_worker`` GPUs each; ``batch_size`` images go to an actor at a time."""
    if engine not in ("local", "ray"):
        raise InvalidInputError(f"engine must be 'local' or 'ray', got {engine!r}")
    out = Path(out)
    spec = model_spec(model, transform, classes)
    settings = {"patch": patch, "stride": stride, **options}
    _check_options(settings)
    rows = None if _is_ray_dataset(images) else listing(images)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:  # this job's parts only: anything else in the folder stays
        for part in [*out.glob("*.parquet"), *out.glob(".part-*.tmp")]:
            part.unlink()
    finished = done(out)
    if rows is not None:
        rows = [r for r in rows if r["image_id"] not in finished]
        if finished:
            log.info("%d images already explained in %s; %d to go", len(finished), out, len(rows))
        if not rows:
            return out
    if engine == "local":
        assert rows is not None
        _run_local(Explainer(spec, settings), rows, out, progress)
    else:
        _run_ray(spec, settings, images if rows is None else rows, out, workers,
                 gpus_per_worker, batch_size, address, finished)  # fmt: skip
    return out


def _check_options(settings: dict[str, Any]) -> None:
    """The options as ``kql.compile`` validates them (on a large stand-in image shape: the
    images' own are known only when they are decoded), before any worker starts."""
    import inspect

    from krypton_ql.options import Options

    known = set(inspect.signature(Options.build).parameters) | {"target"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InvalidInputError(
            f"unknown option {unknown[0]!r} (options: {', '.join(sorted(known - {'input_shape'}))})"
        )
    Options.build((3, 1 << 14, 1 << 14), **{k: v for k, v in settings.items() if k != "target"})


def _run_local(explainer: Explainer, rows: list[dict[str, Any]], out: Path, progress: Any) -> None:
    """Decode on a thread, scan on this one, write a part file every ``PART_ROWS`` images."""
    from krypton_ql.progress import progress_callback

    with progress_callback(progress, len(rows), "images") as report:
        written: list[dict[str, Any]] = []
        with ThreadPoolExecutor(1, thread_name_prefix="kql-decode") as decoder:
            decoded = _prefetch(decoder, explainer, rows)
            for count, (row, image) in enumerate(decoded, start=1):
                written.append(explainer.explain(row["image_id"], row["path"], row["target"],
                                                 image))  # fmt: skip
                if len(written) >= PART_ROWS:
                    _write_part(out, written)
                    written = []
                if report is not None:
                    report(count, len(rows))
        if written:
            _write_part(out, written)


def _prefetch(
    decoder: ThreadPoolExecutor, explainer: Explainer, rows: list[dict[str, Any]]
) -> Iterator[tuple[dict[str, Any], Any]]:
    """Each row with its decoded input, the next image decoding while this one is scanned."""
    explainer._built()  # build the model here, not on the decoding thread
    pending = [decoder.submit(explainer.load, rows[0]["path"])] if rows else []
    for index, row in enumerate(rows):
        if index + 1 < len(rows):
            pending.append(decoder.submit(explainer.load, rows[index + 1]["path"]))
        yield row, pending.pop(0).result()


def _write_part(out: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One Parquet file, written under a temporary name and renamed (a crash leaves no half)."""
    table = pa.Table.from_pylist(list(rows), schema=SCHEMA)
    name = f"part-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    staging = out / f".{name}.tmp"
    pq.write_table(table, staging)
    staging.rename(out / name)


def _is_ray_dataset(images: Any) -> bool:
    return type(images).__module__.startswith("ray.data")


def _run_ray(
    spec: ModelSpec,
    settings: dict[str, Any],
    images: Any,
    out: Path,
    workers: int | None,
    gpus: float,
    batch_size: int | None,
    address: str | None,
    finished: set[str],
) -> None:
    """Ray Data: the listing (or the user's dataset) → ``map_batches(Explainer)`` on an actor
    pool that Ray restarts when an actor dies (its batches are redone) → part files written
    by the driver, as the local engine writes them."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise InvalidInputError(
            "engine='ray' needs Ray: pip install 'krypton-ql[ray]'"
        ) from None  # fmt: skip
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    if isinstance(images, list):
        dataset = ray.data.from_items(images)
    else:
        dataset = images
        if finished:
            dataset = dataset.filter(lambda row: row["image_id"] not in finished)
    cpus = int(ray.available_resources().get("CPU", 1))
    size = workers or max(1, cpus)
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
    threads = max(1, min(cpus // size, int(largest)))  # an actor's share, on one node
    results = dataset.map_batches(
        Explainer,
        fn_constructor_args=(spec, settings, threads),
        compute=ray.data.ActorPoolStrategy(size=size),
        batch_size=batch_size or 1,
        batch_format="pandas",
        num_gpus=gpus,
        num_cpus=threads,
        max_restarts=-1,
        max_task_retries=-1,
    )
    for batch in results.iter_batches(batch_format="pyarrow", batch_size=PART_ROWS):
        _write_part(out, batch.to_pylist())  # on the driver: ``out`` is its folder
