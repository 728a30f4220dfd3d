"""Occlusion scans as dataset jobs: ``Session.sql(…, engine="local" | "ray")``.

Each ``occlusion(…)`` call of a statement runs as a dataset job
(``krypton_ql.integrations.datasets``) over its images (on this process, or on Ray actors that each
compile the plan once) and writes the call's relation (``scans.SCHEMA``: one row per image × class ×
position) as Parquet part files under ``out/<job>/``; DuckDB reads them in place (``read_parquet``)
and runs the rest of the statement. The job's folder is named by what the rows depend on — the
model's weights, the image set's sources, the compiled options, the classes and positions asked for
— so a statement run again, or over more images, reads the images already there and computes only
the missing ones (a job cut off by a crash resumes; part files are whole images). An image that
cannot be loaded, or has another shape than the first, gets no rows: the statement fails naming it,
after the other images' rows are written.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from krypton_ql import fingerprint, photos
from krypton_ql.dsl import catalog, scans
from krypton_ql.integrations import datasets
from krypton_ql.integrations.datasets.folder import JobFolder, Record
from krypton_ql.options import Options
from krypton_ql.plans.build import build_plan

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
# What a worker returns: the relation's rows, plus the image's queries (on its first row, 0 on
# the others) and error (the image's one row when it has no others); neither is written.
ROWS = scans.SCHEMA.append(pa.field("queries", pa.int64())).append(pa.field("error", pa.string()))


@dataclass
class ScanWorker(datasets.Worker):
    """One occlusion call's worker: compiles the plan once, then turns each image (by name)
    into its relation rows, or one row with its ``error``."""

    module: nn.Module  # what the plan compiles (a map-output model's region scores)
    entry: catalog.Model  # the registered model: its transform reads photos
    images: catalog.Images
    options: Options
    classes: tuple[int, ...] | None
    positions: np.ndarray
    grid: dict[str, np.ndarray]
    threads: int | None = None
    schema = ROWS
    key = "image"
    _plan: Any = field(default=None, init=False, repr=False)

    def setup(self) -> None:
        if self._plan is None:
            datasets.Worker.setup(self)
            self._plan = build_plan(self.module, self.options)

    def load(self, item: dict[str, Any]) -> Tensor | Exception:
        name = str(item["image"])
        try:
            image = catalog.load(self.images, name, self.entry, "")
        except Exception as error:  # a QueryError (with its cause), or a bad registration
            return error
        if tuple(image.shape) != self.options.shape:
            return ValueError(
                f"image {name!r} has shape {list(image.shape)}, not the scan's "
                f"{list(self.options.shape)} (the first image's)"
            )
        return image

    def process(self, item: dict[str, Any], loaded: Any) -> pa.Table:
        name = str(item["image"])
        if isinstance(loaded, Exception):
            row: dict[str, Any] = {column: None for column in ROWS.names}
            row.update(image=name, queries=0, error=str(loaded))
            return pa.Table.from_pylist([row], schema=ROWS)
        self.setup()
        targets = None
        if self.classes is not None:
            targets = torch.tensor([list(self.classes)], dtype=torch.int64)
        result = self._plan.evaluate(
            loaded[None],
            targets=targets,
            positions=torch.as_tensor(self.positions, dtype=torch.int64),
            progress=False,
        )
        kinds = result.targets.shape[1]
        scores = result.heatmaps.reshape(1, kinds, -1)[:, :, self.positions].float().numpy()
        relation = scans.build(
            [name],
            result.targets.cpu().numpy(),
            scores,
            result.base.float().cpu().numpy(),
            self.positions,
            self.grid,
            self.entry.classes,
            None if result.ssim_estimate is None else result.ssim_estimate.numpy(),
        )
        table = relation.table
        queries = np.zeros(len(table), dtype=np.int64)
        queries[:1] = result.queries
        table = table.append_column("queries", pa.array(queries))
        return table.append_column("error", pa.nulls(len(table), pa.string()))


@dataclass(frozen=True)
class Job:
    """Where a call's rows live, and the DuckDB relation that reads the requested ones."""

    folder: Path
    names: tuple[str, ...]

    @property
    def store(self) -> JobFolder:
        """The folder's record (the scan's digest is its name), lock and parts."""
        return JobFolder(self.folder, Record("occlusion scan", {"scan": self.folder.name}))

    def done(self) -> set[str]:
        """The images that already have rows in the folder."""
        rows = self.store.read(["image"])
        return set() if rows is None else set(pc.unique(rows.column(0)).to_pylist())

    def source(self, names_relation: str) -> str | None:
        """The relation's SQL (the requested images' rows), or None when there are none."""
        if not any(self.folder.glob("part-*.parquet")):
            return None
        files = str(self.folder / "part-*.parquet").replace("'", "''")
        return (
            f"SELECT * FROM read_parquet('{files}') "
            f"WHERE image IN (SELECT image FROM {names_relation})"
        )


def folder(
    root: Path,
    module: nn.Module,
    images: catalog.Images,
    options: Options,
    classes: tuple[int, ...] | None,
    positions: np.ndarray,
) -> Path:
    """``root/<digest>``: one folder per model weights × image sources × options × classes ×
    positions."""
    digest = hashlib.sha256(fingerprint.weights_digest(module).encode())
    for name, item in sorted(images.items.items()):
        digest.update(name.encode())
        digest.update(_source(item))
    digest.update(repr((options, classes)).encode())
    digest.update(np.ascontiguousarray(positions, dtype=np.int64).tobytes())
    return root / f"scan-{digest.hexdigest()[:16]}"


def _source(item: Any) -> bytes:
    """What an image's rows depend on: a file's path, size and time, a tensor's values, a
    loader's name (the sample photos)."""
    if isinstance(item, photos.PhotoFile):
        return repr(fingerprint.file_stamp(item.path)).encode()
    if isinstance(item, Tensor):
        return item.detach().cpu().contiguous().numpy().tobytes()
    return repr(getattr(item, "__qualname__", type(item).__qualname__)).encode()


def run(
    worker: ScanWorker,
    job: Job,
    *,
    engine: str,
    workers: int | None,
    gpus_per_worker: float,
    address: str | None,
    progress: Any,
) -> tuple[int, dict[str, str]]:
    """Compute the job's missing images; the queries run and each failed image's error. One
    process computes a scan at a time: a second refuses at once."""
    store = job.store
    errors: dict[str, str] = {}
    queries = 0

    def sink(table: pa.Table) -> None:
        nonlocal queries
        failed = table.filter(pc.is_valid(table.column("error")))
        errors.update(zip(failed.column("image").to_pylist(), failed.column("error").to_pylist()))
        queries += int(pc.sum(table.column("queries")).as_py() or 0)
        good = table.filter(pc.is_null(table.column("error")))
        if len(good):
            store.write(good.drop_columns(["queries", "error"]))

    with store.writing():
        done = job.done()
        items = [{"image": name} for name in job.names if name not in done]
        if items:
            started = time.perf_counter()
            datasets.run_job(worker, items, sink, engine=engine, workers=workers,
                             gpus_per_worker=gpus_per_worker, address=address,
                             progress=progress)  # fmt: skip
            log.info(
                "%d images scanned into %s in %.1f s", len(items), job.folder,
                time.perf_counter() - started,
            )  # fmt: skip
    return queries, errors
