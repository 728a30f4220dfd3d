"""``explain_dataset``: one job's run into its folder (record, lock, resume; see
``krypton_ql.integrations.datasets.folder``), and ``read``, the rows of the job in a folder."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from compiler.errors import InvalidInputError
from krypton_ql import fingerprint
from krypton_ql.integrations.datasets.engines import _is_ray_dataset, run_job
from krypton_ql.integrations.datasets.folder import JobFolder, Record
from krypton_ql.integrations.datasets.listing import listing
from krypton_ql.integrations.datasets.workers import SCHEMA, Explainer, model_spec

log = logging.getLogger(__name__)


OVERLAYS = "overlays"  # out/overlays/<overlay_name(image_id)>: a picture of each row


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
    return re.sub(r"Size\(([\d, ]+)\)", r"(\1)", repr(value))


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
