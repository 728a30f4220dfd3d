"""``kql.connect()``: a Session with a catalog of models and image sets, and a DuckDB
connection that runs its statements.

A new session knows the built-in pretrained model as ``efficientnet_lite0`` and the sample
photos as ``photos`` (chelsea, coffee, astronaut, rocket), so a first query needs no set-up.

A statement is DuckDB's SQL plus the ``occlusion(images, model, …)`` table function and the
``heatmap(v)`` aggregate. Each occlusion call is validated and bound, the WHERE predicates it
can take are pushed into it (evaluated by DuckDB over the grid, the image names and the
classes), the scan runs (or is answered from the session's cache of computed relations), its
rows are registered in DuckDB as an Arrow relation, and DuckDB runs the statement with each
call replaced by that relation's name.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from sqlglot import exp
from torch import Tensor, nn

from compiler.errors import InvalidInputError
from krypton_ql import fingerprint
from krypton_ql.dsl import catalog, jobs, pushdown, scans, segment_scans
from krypton_ql.dsl.bind import Bound, Scan, bind
from krypton_ql.dsl.engine import Engine, Rewrite, heatmap_error, rewrite
from krypton_ql.dsl.errors import QueryError
from krypton_ql.dsl.outline import Outline, describe
from krypton_ql.dsl.parse import Statement, fail, parse
from krypton_ql.dsl.result import Result
from krypton_ql.options import APPROXIMATE, APPROXIMATION_SETTINGS, Options
from krypton_ql.plans.base import HeatmapPlan
from krypton_ql.plans.build import build_plan
from krypton_ql.plans.tuning import with_shipped_profile


@dataclass
class _Prepared:
    """A scan resolved against the catalog: its plan, what it computes, and how."""

    scan: Scan
    plan: HeatmapPlan | None  # None when no image is asked for
    request: scans.Request
    images: Tensor  # the requested images, in the order of request.names
    targets: Tensor | None
    registered: int  # images in the image set
    table: pa.Table | None = None  # from the cache, or once computed
    module: nn.Module | None = None  # what the plan compiled, with its options
    options: Options | None = None
    job: jobs.Job | None = None  # a dataset job's Parquet, which DuckDB reads
    labels: list[Tensor] | None = None  # a segment scan's label image per requested image
    keep: list[np.ndarray] | None = None  # per image, the segments its pushdown keeps


class Session:
    """A catalog of models and images, a DuckDB connection, and the queries that run on them.

    ``database``: None keeps DuckDB in memory; a path opens (or creates) a DuckDB file, so that
    ``CREATE TABLE … AS SELECT … FROM occlusion(…)`` keeps heatmap rows across sessions.
    """

    def __init__(self, database: str | Path | None = None) -> None:
        from krypton_ql import models

        self.engine = Engine(database)
        self._models: dict[str, catalog.Model] = {}
        self._images: dict[str, catalog.Images] = {}
        self._models["efficientnet_lite0"] = catalog.Model(
            None, models.preprocess, models.imagenet_classes(), loader=models.efficientnet_lite0
        )
        photos = {name: (lambda n=name: models.sample_photo(n)) for name in models.SAMPLE_PHOTOS}
        self._images["photos"] = catalog.Images(photos, raw=True)
        self.last_queries = 0  # occlusion queries the last statement executed
        self.last_plan: Any = None  # the plan of the last statement's last occlusion call
        self.last_cached = 0  # occlusion calls of the last statement answered from the cache
        self.last_reruns = 0  # images the quality guard (ssim => …) ran again, last statement
        # An SSIM target for every occlusion scan that asks for no approximation itself (the
        # CLI's --ssim); None: exact unless a query asks.
        self.ssim: float | None = None
        self._last_inputs: dict[str, Tensor] = {}
        self._last_sources: dict[str, Any] = {}  # image name → what was registered
        self._last_source: tuple[catalog.Images, catalog.Model, tuple[str, ...]] | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None  # jobs' default out
        self._plans: dict[tuple[Any, Options], HeatmapPlan] = {}  # compiled plans, reused
        self._wrappers: dict[tuple, Any] = {}  # map-output models: probes, region scores
        self._regions: dict[str, Any] = {}  # region => 'name': boolean masks and boxes
        self._segments: dict[str, dict[str, Tensor]] = {}  # segments => 'name': label images
        self._made_segments: dict[Any, Tensor] = {}  # segments => 'slic' …, per image version
        self._last_segments: dict[str, Tensor] = {}  # image → labels, last segment scan
        self.cache = scans.Cache()
        self._generation = 0
        # Seconds the last statement spent parsing, binding and validating ("parse"), loading
        # images, compiling and pushing down ("prepare"), in occlusion scans ("scan"), and in
        # DuckDB with the registration of the scans and the result ("duckdb").
        self.last_timings: dict[str, float] = {}

    # -- catalog ------------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        module: nn.Module,
        *,
        transform: catalog.Transform | None = None,
        classes: Sequence[str] | None = None,
        profile: Any = None,
    ) -> None:
        """Make ``module`` available to queries as ``name``; ``transform`` turns raw photos
        (image files) into its input; ``profile`` (from ``kql.tune``) serves ``ssim => …``."""
        if not isinstance(module, nn.Module):
            raise InvalidInputError(f"register_model needs an nn.Module, got {type(module)}")
        self._models[name] = catalog.Model(module.eval(), transform, classes, profile=profile)
        self._forget()

    def tune(self, model: str, images: str | None = None, **options: Any) -> Any:
        """``kql.tune`` the registered ``model`` on the image set ``images`` (default: the
        tuning set, ``kql.tuning_images``, through the model's transform; same options:
        ``ssim``, ``patch``, ``stride``, ``drilldown``, …) and keep the profile for its
        ``ssim => …`` queries. Returns the profile."""
        from krypton_ql.plans.tuning import tune, tuning_photos

        if model not in self._models:
            raise InvalidInputError(f"unknown model {model!r} (models: {', '.join(self._models)})")
        if images is not None and images not in self._images:
            raise InvalidInputError(f"unknown images {images!r}")
        entry = self._models[model]
        if images is None:
            photos = dict(tuning_photos())
            images_set = catalog.Images({n: (lambda p=p: p) for n, p in photos.items()}, raw=True)
        else:
            images_set = self._images[images]
        text = f"tune({model!r}, {images!r})"
        sample = torch.stack([catalog.load(images_set, n, entry, text) for n in images_set.items])
        entry.profile = tune(entry.get(), sample, **options)
        self._forget()
        return entry.profile

    def register_images(self, name: str, images: Any) -> list[str]:
        """Register a batch tensor ``[N, C, H, W]`` or ``[N, C, D, H, W]`` or a list of tensors
        ``[C, *spatial]`` (signals, images or volumes; named by index), or image files, NIfTI
        volumes and ``.npy`` arrays or a folder of them (named by file stem;
        ``krypton_ql.volumes`` says how arrays are read).
        Returns the image names."""
        entry = catalog.image_set(images)
        self._generation += 1
        entry.generation = self._generation
        self._images[name] = entry
        return list(entry.items)

    def model(self, name: str) -> catalog.Model:
        """The registered model ``name`` (its module, transform, class names and profile)."""
        if name not in self._models:
            raise InvalidInputError(f"unknown model {name!r} (models: {', '.join(self._models)})")
        return self._models[name]

    def load_image(self, images: str, name: str, model: str) -> Tensor:
        """Image ``name`` of the set ``images`` as ``model``'s input, as a query computes it."""
        if images not in self._images:
            raise InvalidInputError(
                f"unknown image set {images!r} (image sets: {', '.join(self._images)})"
            )
        entry = self._images[images]
        if name not in entry.items:
            raise InvalidInputError(f"unknown image {name!r} in {images!r}")
        try:
            return catalog.load(entry, name, self.model(model), "")
        except QueryError as error:
            raise InvalidInputError(error.message) from None

    def register_region(self, name: str, region: Any) -> None:
        """Make ``region`` available to queries of map-output models as ``region => 'name'``:
        a boolean mask ``[H, W]`` in the model's input pixels (a tensor, a NumPy array, or a
        mask image file whose non-zero pixels are the region) or a box ``(y0, x0, y1, x1)``."""
        from krypton_ql.integrations import segmentation

        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"a region's name must be a non-empty string, got {name!r}")
        self._regions[name] = segmentation.as_region(region)  # wrappers are keyed by content

    def register_segments(self, name: str, labels: Any) -> None:
        """Make label images available to queries as ``segments => 'name'`` (each label one
        segment to hide): a mapping of image names to label images, or one label image for
        every image — tensors or arrays of integers ``[*spatial]`` (the model input's spatial
        axes), or label files (PNG, ``.npy``, NIfTI). ``krypton_ql.segments`` makes them from
        scikit-image segmentations or a segmentation model's instances."""
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"segments' name must be a non-empty string, got {name!r}")
        from krypton_ql.segments import METHODS

        if name in METHODS:
            raise InvalidInputError(f"{name!r} names a segmentation method: choose another name")
        self._segments[name] = segment_scans.register(labels)
        self.cache.clear()

    def segments_of(self, image: str) -> Tensor | None:
        """The labels the last statement's segment scan cut image ``image`` into (None: it
        ran none over that image)."""
        return self._last_segments.get(image)

    def regions(self) -> list[str]:
        """The registered regions' names."""
        return list(self._regions)

    def register_table(self, name: str, data: Any) -> None:
        """Make ``data`` a table that statements can join with: a pandas or polars DataFrame,
        an Arrow table, or a CSV or Parquet file (copied into the database)."""
        catalog.register_table(self.engine, name, data)

    def sandbox(self) -> None:
        """Ready the session for statements from someone else (``kql serve``'s SQL box): its
        DuckDB reads and writes no files, reaches no network, loads no extension and keeps
        its configuration; statements other than queries are refused, and so are dataset
        jobs (``engine=``). Models, images and tables registered from Python still work."""
        self.engine.sandbox()

    def interrupt(self) -> None:
        """Stop DuckDB's part of the running statement (from another thread)."""
        self.engine.interrupt()

    def _forget(self) -> None:
        """A model or profile changed: compiled plans and computed relations are stale."""
        self._plans.clear()
        self._wrappers.clear()
        self.cache.clear()

    def models(self) -> list[str]:
        return sorted(self._models)

    def image_sets(self) -> dict[str, list[str]]:
        return {name: list(entry.items) for name, entry in sorted(self._images.items())}

    def tables(self) -> list[str]:
        """The database's tables and views (user tables, registered data)."""
        rows = self.engine.query(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_name NOT LIKE 'kql\\_%' ESCAPE '\\' ORDER BY table_name"
        )
        return [str(v) for v in rows.column(0).to_pylist()]

    # -- queries ------------------------------------------------------------------------------

    def sql(
        self,
        query: str,
        *,
        progress: Any = "auto",
        engine: str | None = None,
        workers: int | None = None,
        out: str | Path | None = None,
        address: str | None = None,
        gpus_per_worker: float = 0,
        max_rows: int | None = None,
        cancel: threading.Event | None = None,
        exact: bool = False,
        _sql_plan: bool = False,
    ) -> Result:
        """Run one statement (or ``EXPLAIN [VERBOSE]`` one) and return its result. ``progress``:
        a bar on stderr (``True``; ``"auto"``: when it is a terminal), a ``callback(done,
        total)``, or ``False``.

        ``engine``: None computes each ``occlusion(…)`` call in this process (relations kept in the
        session's memory cache); ``"local"`` or ``"ray"`` runs it as a dataset job
        (``krypton_ql.integrations.datasets``; with Ray, ``workers`` actors of ``gpus_per_worker``
        GPUs on the cluster at ``address``) that writes its rows as Parquet under ``out`` (default:
        a folder of the session's, removed with it), and DuckDB reads them there. A job's rows are
        reused by later statements, and by later sessions given the same ``out``
        (``krypton_ql.dsl.jobs``).

        ``max_rows``: the result keeps the statement's first rows only (``Result.total_rows``
        counts them all; the others are never converted to Python or Arrow in one piece).
        ``cancel``: once set, DuckDB starts no more of the statement (``interrupt()`` stops
        what it is running; an occlusion scan stops where its ``progress`` callback raises).
        ``exact``: run every occlusion call without its approximation options (``kql query
        --compare-exact``'s reference)."""
        clock = _Clock()
        job = self._job_settings(engine, workers, out, address, gpus_per_worker)
        statement = parse(query)
        self.last_queries, self.last_cached, self.last_reruns = 0, 0, 0
        if statement.tree is None:  # plain DuckDB SQL
            try:
                rows = self.engine.run(Rewrite(statement.text), max_rows=max_rows, cancel=cancel)
                result = Result(rows.table, "", total_rows=rows.total)
            except QueryError as error:
                raise _with_hint(error, self) from None
            self.last_timings = clock.split("duckdb")
            return result
        bound = bind(statement)
        for scan in bound.scans:  # the session's SSIM target, where a scan states none
            if self.ssim is not None and not scan.segmented and not set(scan.options) & APPROXIMATE:
                scan.options["ssim"] = self.ssim
        if exact:
            bound = _without_approximation(bound)
        names = [f"kql_occlusion_{i}" for i in range(len(bound.scans))]
        for scan in bound.scans:
            self._model(scan, statement)
            self._catalog(scan, statement)
        self._validate(statement, bound, names, cancel)
        clock.split("parse")
        for scan in bound.scans:
            if scan.segmented and job is not None:
                raise fail(
                    "a segment scan runs in this process: leave out engine= (dataset jobs "
                    "scan patches)",
                    scan.option_nodes["segments"],
                    statement.text,
                )
        prepared = [self._prepare(scan, statement, lazy=job is not None) for scan in bound.scans]
        grids = [p.plan.grid if p.plan is not None else None for p in prepared]
        count = len(prepared)
        explanation = "\n".join(
            self._describe(p, statement, i, count, _sql_plan) for i, p in enumerate(prepared)
        )
        plans = [p.plan for p in prepared if p.plan is not None]
        if plans or any(scan.segmented for scan in bound.scans):
            self.last_plan = plans[-1] if plans else None
        clock.split("prepare")
        if statement.explain:
            self.last_timings = clock.times
            return Result(pa.table({"plan": [explanation]}), explanation)
        for item in prepared:
            if job is None or item.table is not None:
                self._compute(item, progress, statement)
            else:
                self._run_job(item, statement, job, progress)
        clock.split("scan")
        edited = rewrite(statement, bound, names, grids)
        try:
            for name, item in zip(names, prepared):
                self._register(name, item)
            rows = self.engine.run(edited, max_rows=max_rows, cancel=cancel)
        finally:
            for name in names:
                self.engine.unregister(name)
                self.engine.unregister(f"{name}_images")
                self.engine.connection.execute(f"DROP VIEW IF EXISTS {name}")
        painted = [dict(zip(p.request.names, p.labels)) if p.labels is not None else None
                   for p in prepared]  # fmt: skip
        result = Result(rows.table, explanation, heatmap_error(statement, bound), rows.total,
                        segments=painted)  # fmt: skip
        self.last_timings = clock.split("duckdb")
        return result

    def input_source(self, name: str) -> Any:
        """What image ``name`` of the last statement was registered as: a tensor, a
        ``krypton_ql.photos.PhotoFile`` or a ``krypton_ql.volumes.VolumeFile`` (with the
        affine a volume heatmap is written with); None if none."""
        return self._last_sources.get(name)

    def input_image(self, name: str) -> Tensor | None:
        """The model input the last statement computed for image ``name`` (None if none)."""
        if name not in self._last_inputs and self._last_source is not None:
            images, model, names = self._last_source  # a dataset job's: loaded when asked
            if name in names:
                return catalog.load(images, name, model, "")
        return self._last_inputs.get(name)

    def outline(self, query: str) -> Outline:
        """What ``query`` computes, bound but not run (``krypton_ql.dsl.outline``): its
        occlusion calls and heatmap columns."""
        return describe(query)

    def _job_settings(
        self,
        engine: str | None,
        workers: int | None,
        out: str | Path | None,
        address: str | None,
        gpus: float,
    ) -> dict[str, Any] | None:
        """The dataset-job settings of ``sql``'s keywords (None: scans run in this process)."""
        if engine is None:
            settings = {"workers": workers, "out": out, "address": address,
                        "gpus_per_worker": gpus or None}  # fmt: skip
            given = [k for k, v in settings.items() if v is not None]
            if given:
                raise InvalidInputError(f"{given[0]}= needs engine='local' or engine='ray'")
            return None
        if self.engine.sandboxed:
            raise InvalidInputError(
                "this session is sandboxed (kql serve): it runs no dataset jobs, which write files"
            )
        if engine not in jobs.ENGINES:
            raise InvalidInputError(f"engine must be None, 'local' or 'ray', got {engine!r}")
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise InvalidInputError(f"workers must be a positive integer, got {workers!r}")
        if out is None:
            if self._scratch is None:
                self._scratch = tempfile.TemporaryDirectory(prefix="kql-jobs-")
            out = self._scratch.name
        return {"engine": engine, "workers": workers, "root": Path(out), "address": address,
                "gpus_per_worker": gpus}  # fmt: skip

    def _run_job(
        self, item: _Prepared, statement: Statement, job: dict[str, Any], progress: Any
    ) -> None:
        """Compute a scan as a dataset job; its relation is DuckDB's read of the job's Parquet."""
        if item.plan is None:
            item.table = scans.empty()
            return
        assert item.module is not None and item.options is not None
        request, scan = item.request, item.scan
        model, image_set = self._model(scan, statement), self._catalog(scan, statement)
        root = jobs.folder(job["root"], item.module, image_set, item.options, request.classes,
                           request.positions)  # fmt: skip
        where = jobs.Job(root, request.names)
        worker = jobs.ScanWorker(item.module, model, image_set, item.options, request.classes,
                                 request.positions, _grid(item.plan))  # fmt: skip
        queries, errors = jobs.run(
            worker, where, engine=job["engine"], workers=job["workers"],
            gpus_per_worker=job["gpus_per_worker"], address=job["address"], progress=progress,
        )  # fmt: skip
        self.last_queries += queries
        self.last_cached += not queries and not errors
        if errors:
            first, message = next(iter(errors.items()))
            raise fail(
                f"{len(errors)} of {len(request.names)} images of '{scan.images}' could not be "
                f"scanned ({first}: {message}); the other images' rows are kept in {root}",
                scan.call,
                statement.text,
            )
        item.job = where

    def _register(self, name: str, item: _Prepared) -> None:
        """A scan's relation in DuckDB: its Arrow table, or a dataset job's Parquet view."""
        images = f"{name}_images"
        source = item.job.source(images) if item.job is not None else None
        if source is None:
            table = item.table if item.table is not None else _empty(item.scan)
            self.engine.register(name, table)
            return
        self.engine.register(images, pa.table({"image": list(item.request.names)}))
        self.engine.connection.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {source}")

    def explain(self, query: str, *, sql: bool = False) -> str:
        """The plan of a query, pushdowns first; ``sql``: with the incremental plan as SQL."""
        text = query if _is_explain(query) else f"EXPLAIN {query}"
        result = self.sql(text, _sql_plan=sql)
        if result.columns != ["plan"]:  # DuckDB's own EXPLAIN of a statement without a scan
            return "\n".join(str(row[-1]) for row in result.rows)
        return "\n".join(str(row[0]) for row in result.rows)

    def _validate(
        self,
        statement: Statement,
        bound: Bound,
        names: list[str],
        cancel: threading.Event | None = None,
    ) -> None:
        """DuckDB binds the statement against empty relations before any scan runs: unknown
        columns and functions, GROUP BY mistakes and type errors of the plan surface first."""
        edited = rewrite(statement, bound, names, [None] * len(names))
        try:
            for name, scan in zip(names, bound.scans):
                self.engine.register(name, _empty(scan))
            self.engine.run(edited, explain_only=True, cancel=cancel)
        except QueryError as error:
            raise _with_hint(error, self) from None
        finally:
            for name in names:
                self.engine.unregister(name)

    def _model(self, scan: Scan, statement: Statement) -> catalog.Model:
        return _lookup(self._models, scan.model, "model", "models", scan.call, 1, statement)

    def _catalog(self, scan: Scan, statement: Statement) -> catalog.Images:
        return _lookup(self._images, scan.images, "images", "image sets", scan.call, 0, statement)

    def _prepare(self, scan: Scan, statement: Statement, lazy: bool = False) -> _Prepared:
        """Resolve a scan: images (with the image pushdown), plan, classes, positions, and the
        cache's answer if it has one. ``lazy``: load only the first image (a dataset job's
        workers load the others)."""
        if scan.segmented:
            return self._prepare_segments(scan, statement)
        model, image_set = self._model(scan, statement), self._catalog(scan, statement)
        names = pushdown.image_names(self.engine, scan, statement, list(image_set.items))
        loaded = names[:1] if lazy else names
        tensors = [catalog.load(image_set, name, model, statement.text) for name in loaded]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise fail(
                f"the images of '{scan.images}' differ in shape: {sorted(shapes)}",
                scan.call.expressions[0],
                statement.text,
            )
        if not tensors:  # no image satisfies the image predicates: an empty relation
            request = scans.Request(None, (), None, np.zeros(0, dtype=np.int64))
            return _Prepared(scan, None, request, torch.empty(0), None, len(image_set.items),
                             scans.empty())  # fmt: skip
        images = torch.stack(tensors)
        plan, module, options = self._compile(scan, statement, model.get(), images)
        classes = pushdown.classes(self.engine, scan, statement, plan.classes, model.classes)
        self._check_regions(plan, classes, scan, statement)
        positions = pushdown.positions(self.engine, scan, statement, _grid(plan))
        targets = None
        if classes is not None:
            targets = torch.tensor([list(classes)] * len(loaded), dtype=torch.int64)
            targets = targets.reshape(len(loaded), len(classes))
        # What the rows depend on: the model's weights and the images as they are now (an
        # in-place change to either misses the cache), and the call's options.
        key = (
            scan.model,
            fingerprint.versions(model.get()),
            scan.images,
            image_set.generation,
            tuple(sorted((k, repr(v)) for k, v in scan.options.items())),
        )
        versions = catalog.versions(image_set, names)
        request = scans.Request(key, tuple(names), classes, positions, versions)
        self._last_inputs = dict(zip(loaded, tensors))
        self._last_sources = {name: image_set.items[name] for name in names}
        self._last_source = (image_set, model, tuple(names)) if lazy else None
        prepared = _Prepared(scan, plan, request, images, targets, len(image_set.items),
                             module=module, options=options)  # fmt: skip
        prepared.table = None if lazy else self.cache.find(request)
        return prepared

    def _prepare_segments(self, scan: Scan, statement: Statement) -> _Prepared:
        """Resolve a segment scan: images (with the image pushdown), each image's label image,
        the classes, and the cache's answer if it has one."""
        model, image_set = self._model(scan, statement), self._catalog(scan, statement)
        names = pushdown.image_names(self.engine, scan, statement, list(image_set.items))
        tensors = [catalog.load(image_set, name, model, statement.text) for name in names]
        if len({tuple(t.shape) for t in tensors}) > 1:
            shapes = sorted({tuple(t.shape) for t in tensors})
            raise fail(f"the images of '{scan.images}' differ in shape: {shapes}",
                       scan.call.expressions[0], statement.text)  # fmt: skip
        if not tensors:
            request = scans.Request(None, (), None, np.zeros(0, dtype=np.int64))
            return _Prepared(scan, None, request, torch.empty(0), None, len(image_set.items),
                             segment_scans.empty())  # fmt: skip
        images = torch.stack(tensors)
        module = model.get()
        probe = ("returns a map", fingerprint.versions(module), tuple(images.shape[1:]))
        if probe not in self._wrappers:
            from krypton_ql.integrations import segmentation

            self._wrappers[probe] = segmentation.returns_map(module, images)
        if self._wrappers[probe]:
            raise fail(
                "segments => … hides segments from a classifier's score; a model that returns "
                "a map is explained per region with patch => …",
                scan.option_nodes["segments"],
                statement.text,
            )
        versions = catalog.versions(image_set, names)
        labels = segment_scans.label_images(scan, statement, names, images, self._segments,
                                            self._made_segments, versions)  # fmt: skip
        count_key = ("classes", fingerprint.versions(module), tuple(images.shape[1:]))
        if count_key not in self._wrappers:
            with torch.no_grad():
                self._wrappers[count_key] = int(module(images[:1]).shape[-1])
        classes = pushdown.classes(self.engine, scan, statement, self._wrappers[count_key],
                                   model.classes)  # fmt: skip
        method = scan.options["segments"]
        registered = id(self._segments[method]) if method in self._segments else None
        table = segment_scans.geometry(names, labels)
        keep = segment_scans.kept(names, table, pushdown.segments(self.engine, scan, statement,
                                                                 table))  # fmt: skip
        settings = tuple(sorted((k, repr(v)) for k, v in scan.options.items()))
        filters = tuple(sorted(p.sql() for p in scan.position_filters))  # rows hold only these
        key = (scan.model, fingerprint.versions(module), scan.images, image_set.generation,
               registered, settings, filters)  # fmt: skip
        chosen = keep if keep is not None else [label.reshape(-1).numpy() for label in labels]
        ids = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
        request = scans.Request(key, tuple(names), classes, ids.astype(np.int64), versions)
        self._last_inputs = dict(zip(names, tensors))
        self._last_sources = {name: image_set.items[name] for name in names}
        self._last_source = None
        self._last_segments = dict(zip(names, labels))
        prepared = _Prepared(scan, None, request, images, None, len(image_set.items),
                             module=module, labels=labels, keep=keep)  # fmt: skip
        prepared.table = self.cache.find(request)
        return prepared

    def _compute(self, item: _Prepared, progress: Any, statement: Statement) -> None:
        if item.table is not None:
            self.last_cached += item.plan is not None or item.labels is not None
            return
        if item.labels is not None:
            assert item.module is not None
            try:
                results, queries = segment_scans.compute(item.module, item.images, item.labels,
                                                         item.request.classes, item.scan,
                                                         progress, item.keep)  # fmt: skip
            except InvalidInputError as error:
                node = item.scan.option_nodes.get(error.option or "", item.scan.call)
                raise fail(str(error), node, statement.text) from None
            self.last_queries += queries
            relation = segment_scans.build(item.request.names, results, item.labels,
                                           self._models[item.scan.model].classes,
                                           item.keep)  # fmt: skip
            self.cache.add(item.request, relation)
            item.table = relation.table
            return
        assert item.plan is not None
        positions = torch.as_tensor(item.request.positions, dtype=torch.int64)
        result = item.plan.evaluate(
            item.images,
            targets=item.targets,
            positions=positions,
            progress=progress,
            reuse_clean=True,
        )
        self.last_queries += result.queries
        self.last_reruns += result.reruns
        count, kinds = len(item.request.names), result.targets.shape[1]
        index = item.request.positions
        scores = result.heatmaps.reshape(count, kinds, -1)[:, :, index].float().cpu().numpy()
        relation = scans.build(
            item.request.names,
            result.targets.cpu().numpy(),
            scores,
            result.base.float().cpu().numpy(),
            index,
            _grid(item.plan),
            self._models[item.scan.model].classes,
            None if result.ssim_estimate is None else result.ssim_estimate.numpy(),
        )
        self.cache.add(item.request, relation)
        item.table = relation.table

    def _compile(
        self, scan: Scan, statement: Statement, module: nn.Module, images: Tensor
    ) -> tuple[HeatmapPlan, nn.Module, Options]:
        keywords = dict(scan.options)
        if "patch" not in keywords:
            raise fail("occlusion() needs patch => size", scan.call, statement.text)
        keywords.pop("target", None)  # the query's classes are chosen by its WHERE
        module = self._region_scores(scan, statement, module, images, keywords)
        if "ssim" in keywords:
            profile = self._models[scan.model].profile
            if profile is None:  # the built-in model's shipped profile, where one fits
                profile = with_shipped_profile(module, images.shape[1:], keywords).get("profile")
            if profile is None:
                raise fail(
                    f"ssim needs a tuning profile for model '{scan.model}': run "
                    f"session.tune('{scan.model}', '<images>', ssim=…) or register the "
                    "model with profile=kql.tune(…) (or give --profile FILE)",
                    scan.option_nodes.get("ssim", scan.call),  # none: the session's target
                    statement.text,
                )
            keywords["profile"] = profile
        try:
            # One input [C, *spatial] per image: its number of axes is the rank, never a guess.
            keywords.setdefault("spatial_dims", images.dim() - 2)
            options = Options.build(tuple(images.shape[1:]), **keywords)
            key = (fingerprint.versions(module), options)
            plan = self._plans.get(key) or build_plan(module, options)
        except InvalidInputError as error:
            node = scan.option_nodes.get(error.option) if error.option else None
            if node is None:
                raise QueryError(str(error), statement.text, scan.span[0], scan.span[1]) from None
            raise fail(str(error), node, statement.text) from None
        self._plans[key] = plan
        return plan, module, options

    def _check_regions(
        self, plan: HeatmapPlan, classes: Any, scan: Scan, statement: Statement
    ) -> None:
        """A map-output model's classes each have pixels in their region."""
        from krypton_ql.integrations import segmentation

        wrapper = getattr(plan, "model", None)
        if isinstance(wrapper, segmentation.RegionScores) and classes is not None:
            try:
                segmentation.check_target_region(wrapper.weights[0], list(classes))
            except InvalidInputError as error:
                raise fail(str(error), scan.call, statement.text) from None

    def _region_scores(
        self,
        scan: Scan,
        statement: Statement,
        module: nn.Module,
        images: Tensor,
        keywords: dict[str, Any],
    ) -> nn.Module:
        """The model itself, or for a map-output model its region scores
        (``krypton_ql.integrations.segmentation``): ``region => (y0, x0, y1, x1)`` for every
        image, or by default each class's predicted pixels (one image only); ``output =>
        'name'`` picks the map. The scores are the wrapper's (prob or logit), so the plan
        reads them as they are."""
        from krypton_ql.integrations import segmentation

        region, output = keywords.pop("region", None), keywords.pop("output", None)
        if isinstance(region, str):
            if region not in self._regions:
                known = ", ".join(self._regions) or "none; Session.register_region adds one"
                raise fail(
                    f"unknown region {region!r} (regions: {known})",
                    scan.option_nodes["region"],
                    statement.text,
                )
            region = self._regions[region]
        probe = ("returns a map", fingerprint.versions(module), tuple(images.shape[1:]))
        if probe not in self._wrappers:  # one forward per model and shape, not per statement
            self._wrappers[probe] = segmentation.returns_map(module, images)
        if region is None and output is None and not self._wrappers[probe]:
            return module
        if region is None and len(images) > 1:
            raise fail(
                "the default region is each image's own prediction: give region => (y0, x0, "
                "y1, x1) to explain several images of a map-output model in one scan",
                scan.call,
                statement.text,
            )
        score = keywords.get("score", "prob")
        key = ("region", fingerprint.versions(module), _region_key(region), output, score,
               tuple(images.shape),
               None if region is not None else hash(images.cpu().numpy().tobytes()))  # fmt: skip
        wrapper = self._wrappers.get(key)
        if wrapper is None:
            try:
                size = (images.shape[-2], images.shape[-1])
                weights = segmentation.region_weights(module, images[0], region, output, size)
                wrapper = segmentation.RegionScores(module, weights, output, score, size).eval()
            except InvalidInputError as error:
                node = scan.option_nodes.get(error.option or "", scan.call)
                raise fail(str(error), node, statement.text) from None
            self._wrappers[key] = wrapper
        keywords["score"] = "logit"  # the wrapper's scores already are the region scores
        return wrapper

    def _describe(
        self, item: _Prepared, statement: Statement, index: int, count: int, sql: bool
    ) -> str:
        scan, request = item.scan, item.request
        if item.plan is None and item.labels is None:
            return f"== pushdown ==\nimages: 0 of {item.registered}: nothing to compute\n"
        filters = " AND ".join(p.sql() for p in scan.position_filters) or "none"
        classes = list(request.classes) if request.classes is not None else "predicted"
        title = (
            f"== pushdown (call {index + 1} of {count}: {scan.qualifier}) =="
            if count > 1
            else "== pushdown =="
        )
        cached = "yes (computed by an earlier statement)" if item.table is not None else "no"
        if item.labels is not None:
            return (
                f"{title}\nclasses: {classes}\n"
                f"images: {len(request.names)} of {item.registered} ({', '.join(request.names)})\n"
                f"cached: {cached}\n\n"
                + segment_scans.describe(scan, request.names, item.labels, item.keep)
            )
        assert item.plan is not None
        return (
            f"{title}\n"
            f"positions: {len(request.positions)} of {len(item.plan.positions)} "
            f"(filters: {filters})\n"
            f"classes: {classes}\n"
            f"images: {len(request.names)} of {item.registered} ({', '.join(request.names)})\n"
            f"cached: {cached}\n\n" + item.plan.explain(verbose=statement.verbose, sql=sql)
        )


def _empty(scan: Scan) -> pa.Table:
    """The relation's schema with no rows, for a patch or a segment scan."""
    return segment_scans.empty() if scan.segmented else scans.empty()


def _without_approximation(bound: Bound) -> Bound:
    """The statement with every occlusion call exact: its approximation options (and the
    settings only they read) dropped."""
    dropped = APPROXIMATE | APPROXIMATION_SETTINGS
    scans = [
        dataclasses.replace(
            scan, options={k: v for k, v in scan.options.items() if k not in dropped}
        )
        for scan in bound.scans
    ]
    return dataclasses.replace(bound, scans=scans)


def _lookup(
    entries: dict[str, Any],
    name: str,
    what: str,
    kinds: str,
    call: exp.Anonymous,
    argument: int,
    statement: Statement,
) -> Any:
    """A catalog entry, or an error at the call's argument that names it."""
    if name not in entries:
        known = ", ".join(sorted(entries))
        raise fail(
            f"unknown {what} '{name}' ({kinds}: {known})",
            call.expressions[argument],
            statement.text,
        )
    return entries[name]


class _Clock:
    """Phase times of a statement."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def split(self, phase: str) -> dict[str, float]:
        now = time.perf_counter()
        self.times[phase] = self.times.get(phase, 0.0) + now - self._last
        self._last = now
        return self.times


def _grid(plan: HeatmapPlan) -> dict[str, np.ndarray]:
    """Each position's coordinate columns: grid index and first pixel per axis (``slice``/``z``
    along a volume's first axis, ``row``/``y`` down, ``col``/``x`` across; 0 on absent axes)."""
    grid, starts = tuple(plan.grid), plan.positions.starts
    index = np.unravel_index(np.arange(int(np.prod(grid))), grid)
    zeros = np.zeros(int(np.prod(grid)), dtype=np.int64)
    axes = (("slice", "z"), ("row", "y"), ("col", "x"))
    columns = {name: zeros for pair in axes for name in pair}
    for (cell, start), axis, first in zip(axes[3 - len(grid) :], index, starts):
        columns[cell], columns[start] = axis.astype(np.int64), np.asarray(first, dtype=np.int64)
    return columns


def _with_hint(error: QueryError, session: Session) -> QueryError:
    """Name the occlusion function when a statement reads an image set as a table."""
    for name in session._images:
        if f"Table with name {name} does not exist" in error.message:
            hint = f" ('{name}' is an image set: read it with occlusion({name}, model, patch => …))"
            return QueryError(error.message.split("\n")[0] + hint, error.text, *_span(error))
    return error


def _span(error: QueryError) -> tuple[int, int]:
    lines = error.text.split("\n")
    start = sum(len(line) + 1 for line in lines[: error.line - 1]) + error.col - 1
    return start, start + max(1, error.excerpt.count("^"))


def _is_explain(query: str) -> bool:
    return query.lstrip().lower().startswith("explain")


def connect(database: str | Path | None = None) -> Session:
    """A new session that knows the built-in model and sample photos; ``database``: None for
    an in-memory DuckDB, or a DuckDB file that keeps the tables statements create."""
    return Session(database)


def _region_key(region: Any) -> Any:
    """A hashable key of a box or a mask (masks by their bytes)."""
    if isinstance(region, Tensor):
        return ("mask", tuple(region.shape), region.cpu().numpy().tobytes())
    return region
