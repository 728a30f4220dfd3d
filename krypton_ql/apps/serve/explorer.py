"""What ``kql serve`` does, without HTTP: photos, predictions, runs that stream their heatmap in
coarse-to-fine batches, the equivalent SQL statement, and SQL over the session's catalog.

A run computes the heatmap of one image and class over the positions of an optional region, in
the explorer's compute thread (``Compute``; ``kql serve`` makes it the main thread, where torch
runs as fast as in a script): level 0 of a lattice first (every 4th row and column), then every
2nd, then the rest, each batch with ``plan.evaluate(…, positions=…, reuse_clean=True)`` so that
the clean forward is computed once. Events (``start``, ``cells``, ``done``, ``cancelled``,
``error``) go to the run's queue as plain dicts. One job computes at a time; a client's new run
cancels that client's previous one, and other clients' runs wait their turn.

The SQL box runs on the session sandboxed (``Session.sandbox``: no files, no network, queries
only), one statement at a time in the compute thread, each with a time limit and a cancel; its
first rows are converted for the page, the rest only counted.
"""

from __future__ import annotations

import datetime
import decimal
import io
import logging
import math
import os
import queue
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from compiler.errors import InvalidInputError, KryptonError
from krypton_ql import fingerprint, photos
from krypton_ql.apps.serve.runs import (
    UPLOADS,
    Cancelled,
    Run,
    RunRequest,
    region_positions,
    statement,
    stream,
)
from krypton_ql.plans.tuning import with_shipped_profile

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 2**20
SQL_SECONDS = 120.0  # a SQL-box statement's time limit (kql serve --sql-timeout)
SQL_ROWS = 200  # rows of a SQL-box result sent to the page (the others are counted)
_NAME = re.compile(r"[^A-Za-z0-9_-]+")


class Compute:
    """Where runs and SQL statements execute: one job at a time, in order. This one uses a
    thread of its own (tests, embedding); ``kql serve`` runs ``run_forever`` in the main
    thread, since torch on CPU runs 10–15% slower in a second thread next to the main one's
    OpenMP workers (measured on the 2-core machine: benchmarks/serve_latency.py)."""

    def __init__(self, own_thread: bool = True) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self.stopped = threading.Event()
        if own_thread:
            threading.Thread(
                target=self.run_forever, args=(self.stopped,), daemon=True, name="kql-compute"
            ).start()

    def submit(self, job: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._jobs.put((job, future))
        return future

    def run_forever(self, stop: threading.Event | None = None) -> None:
        while stop is None or not stop.is_set():
            try:
                job, future = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)


class Explorer:
    """The server's state: the session (models, image set, uploads), compiled plans, runs."""

    def __init__(
        self,
        session: Any,
        images: str,
        display: Callable[[Tensor], Tensor],
        models: list[str],
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        compute: Compute | None = None,
        sql_seconds: float = SQL_SECONDS,
    ) -> None:
        session.sandbox()  # the SQL box takes statements from the page: no files, no network
        self.session = session
        self.images = images
        self.display = display
        self.models = models
        self.max_upload_bytes = max_upload_bytes
        self.sql_seconds = sql_seconds
        self.compute = compute or Compute()
        self._uploads = tempfile.TemporaryDirectory(prefix="kql-serve-")
        self._plans: dict[tuple, Any] = {}
        self._inputs: dict[tuple[str, str], Tensor] = {}  # (page name, model) → model input
        self._naive: dict[tuple, float] = {}  # (model, shape) → naive seconds per query
        self._runs: dict[str, Run] = {}
        self._latest: dict[str, Run] = {}  # client → its latest run
        self._statements: dict[str, _Statement] = {}  # client → its latest SQL statement
        self._state = threading.Lock()
        self._session_lock = threading.Lock()  # the session is not thread-safe

    # -- photos and predictions ---------------------------------------------------------------

    def photos(self) -> list[str]:
        sets = self.session.image_sets()
        names = list(sets.get(self.images, []))
        return names + [f"{UPLOADS}/{name}" for name in sets.get(UPLOADS, [])]

    def image(self, name: str, model: str = "model") -> Tensor:
        """The page's image ``name`` (``uploads/…`` for an upload) as ``model``'s input (kept:
        an upload's name is never reused, and the image set is fixed while serving)."""
        key = (name, model)
        if key not in self._inputs:
            images = UPLOADS if name.startswith(f"{UPLOADS}/") else self.images
            with self._session_lock:
                image = self.session.load_image(images, name.removeprefix(f"{UPLOADS}/"), model)
            if len(self._inputs) >= 64:
                self._inputs.pop(next(iter(self._inputs)))
            self._inputs[key] = image
        return self._inputs[key]

    def photo_png(self, name: str, model: str = "model") -> bytes:
        """The image as the model sees it (its input, unnormalized), as PNG."""
        from PIL import Image

        shown = self.display(self.image(name, model)).clamp(0, 1)
        array = (shown.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    def predict(self, name: str, model: str = "model", top: int = 5) -> list[dict[str, Any]]:
        """The model's top classes for the image, with names and probabilities."""
        module = self.session.model(model)
        image = self.image(name, model)
        with torch.no_grad():
            probabilities = torch.softmax(module.get()(image[None].float()), dim=1)[0]
        values, classes = probabilities.topk(min(top, len(probabilities)))
        names = module.classes
        return [
            {"class": int(c), "label": _label(names, int(c)), "prob": float(v)}
            for v, c in zip(values, classes)
        ]

    def upload(self, filename: str, data: bytes) -> str:
        """Decode an uploaded photo with the CLI's checks, keep it as a PNG in the server's own
        folder and add it to the ``uploads`` image set; returns its name (``uploads/…``)."""
        from PIL import Image

        if len(data) > self.max_upload_bytes:
            raise InvalidInputError(
                f"the upload has {len(data):,} bytes, above the limit of "
                f"{self.max_upload_bytes:,} (kql serve --max-upload-mb raises it)"
            )
        photo = photos.decode(data, f"the upload {filename!r}")
        self._check_fits(photo, filename)
        encoded = io.BytesIO()
        Image.fromarray(photo).save(encoded, format="PNG")
        stem = _NAME.sub("_", Path(filename).stem)[:40].strip("_") or "upload"
        name = _create(Path(self._uploads.name), stem, encoded.getvalue())
        with self._session_lock:
            self.session.register_images(UPLOADS, self._uploads.name)
        return f"{UPLOADS}/{name}"

    def _check_fits(self, photo: np.ndarray, filename: str) -> None:
        """Every model's transform takes the photo (before it is kept, so that a photo no model
        can read never appears in the list)."""
        for model in self.models:
            transform = self.session.model(model).transform
            if transform is None:
                continue
            try:
                transform(photo)
            except KryptonError:
                raise
            except (ValueError, RuntimeError, TypeError) as error:
                raise InvalidInputError(
                    f"the upload {filename!r} does not fit model {model!r}'s transform: {error}"
                ) from None

    # -- runs ---------------------------------------------------------------------------------

    def start(self, data: Any, client: str) -> Run:
        """Check a request (without a model: the first the server has), cancel the client's
        previous run and start this one."""
        if isinstance(data, dict) and "model" not in data:
            data = {**data, "model": self.models[0]}
        request = RunRequest.parse(data, self.images)
        if request.model not in self.models:
            raise InvalidInputError(
                f"unknown model {request.model!r} (models: {', '.join(self.models)})"
            )
        if request.image not in self.session.image_sets().get(request.images, []):
            raise InvalidInputError(f"unknown image {request.image!r}")
        run = Run(secrets.token_hex(8), client, request)
        with self._state:
            previous = self._latest.get(client)
            if previous is not None:
                previous.cancel()
            self._latest[client] = run
            self._runs[run.id] = run
            for old in list(self._runs.values())[:-16]:  # keep the last 16 runs' results
                if old.finished.is_set():
                    del self._runs[old.id]
        self.compute.submit(lambda: self._execute(run))
        return run

    def run(self, run_id: str) -> Run:
        run = self._runs.get(run_id)
        if run is None:
            raise InvalidInputError(f"no run {run_id!r} (runs are kept while the server runs)")
        return run

    def plan(self, request: RunRequest, shape: tuple[int, ...]) -> Any:
        """The compiled plan for a request (compiled once per model, shape and options)."""
        import krypton_ql as kql

        model = self.session.model(request.model)
        options_key = tuple(sorted(request.options().items()))
        key = (request.model, fingerprint.versions(model.get()), shape, options_key)
        if key not in self._plans:
            options = request.options()
            if request.mode == "ssim":
                profile = model.profile or with_shipped_profile(model.get(), shape, options).get(
                    "profile"
                )  # the built-in model's, where it fits
                if profile is None:
                    raise InvalidInputError(
                        "ssim needs a tuning profile: start kql serve with --profile FILE "
                        "(kql.tune(…).save(FILE)), or choose tau"
                    )
                options["profile"] = profile
            if len(self._plans) >= 16:  # the oldest plan goes first
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = kql.compile(model.get(), shape, **options)
        return self._plans[key]

    def _execute(self, run: Run) -> None:
        put = run.events.put
        try:
            if run.cancelled.is_set():  # cancelled while waiting its turn
                put({"type": "cancelled", "done": 0})
                return
            self._compute_run(run, put)
        except KryptonError as error:
            put({"type": "error", "message": str(error)})
        except Exception as error:  # a bug: the page says so, the server keeps serving
            log.exception("run %s failed", run.id)
            put({"type": "error", "message": f"internal error: {type(error).__name__}: {error}"})
        finally:
            run.finished.set()

    def _compute_run(self, run: Run, put: Callable[[dict[str, Any]], None]) -> None:
        """Prepare the run (the plan, the class, the positions, the naive estimate), announce it,
        and stream its stages (``runs.stream``)."""
        request = run.request
        started = time.perf_counter()
        image = self.image(request.page_name, request.model)
        if request.hide == "segments":
            self._compute_segments(run, put, image, started)
            return
        plan = self.plan(request, tuple(image.shape))
        model, target = self._class(run, image)
        index = region_positions(plan, request.region)
        naive = self._naive_seconds(request.model, model.get(), image) * len(index)
        prepared = time.perf_counter()  # the plan compiled (or reused), the naive time measured
        run.plan = plan
        rows, cols = plan.grid
        put({
            "type": "start", "run": run.id, "rows": rows, "cols": cols,
            "positions": len(index), "class": target, "label": run.label,
            "base": run.base, "patch": request.patch, "stride": request.stride,
            "sql": statement(request, target),
            "naive_seconds": naive, "theoretical_speedup": plan.theoretical_speedup,
            "mode": request.mode, "prepare_seconds": prepared - started,
        })  # fmt: skip
        queries = stream(run, plan, image, target, index, put, started)
        if queries is None:  # cancelled
            return
        elapsed, computing = time.perf_counter() - started, time.perf_counter() - prepared
        # The speedup compares like with like: naive re-inference against the occlusion work
        # (the clean forward included), not the compilation or the naive timing itself.
        run.summary = {"elapsed": elapsed, "compute_seconds": computing, "queries": queries,
                       "naive_seconds": naive, "speedup": naive / computing}  # fmt: skip
        put({"type": "done", **run.summary})

    def _class(self, run: Run, image: Tensor) -> tuple[Any, int]:
        """The run's model and class (the request's, else the predicted one, checked), with
        the clean probability, the class's name and the photo the page shows."""
        request = run.request
        model = self.session.model(request.model)
        with torch.no_grad():
            logits = model.get()(image[None].float())[0]
        classes = logits.shape[0]
        target = int(logits.argmax()) if request.target is None else request.target
        if not 0 <= target < classes:
            raise InvalidInputError(f"class {target} is not one of the model's {classes}")
        run.label = _label(model.classes, target)
        run.base = float(torch.softmax(logits, 0)[target])
        run.photo = self.display(image).clamp(0, 1)
        return model, target

    def _compute_segments(
        self, run: Run, put: Callable[[dict[str, Any]], None], image: Tensor, started: float
    ) -> None:
        """A segment run: the photo's SLIC superpixels (as ``segments => 'slic'`` cuts them),
        each hidden in turn (``plans.regions.ablate``), the painted map sent as one grid of
        pixels (patch 1, stride 1)."""
        from krypton_ql import segments
        from krypton_ql.plans.regions import ablate

        request = run.request
        if image.dim() != 3:
            raise InvalidInputError("segments are cut from pictures [C, H, W]")
        model, target = self._class(run, image)
        labels = segments.segment(image, "slic", n_segments=request.segments)
        count = int(labels.max()) + 1
        naive = self._naive_seconds(request.model, model.get(), image) * count
        prepared = time.perf_counter()
        run.labels = labels
        rows, cols = labels.shape
        put({
            "type": "start", "run": run.id, "rows": rows, "cols": cols, "positions": count,
            "class": target, "label": run.label, "base": run.base, "patch": 1, "stride": 1,
            "hide": "segments", "sql": statement(request, target), "naive_seconds": naive,
            "theoretical_speedup": None, "mode": "exact", "prepare_seconds": prepared - started,
        })  # fmt: skip

        def report(done: int, total: int) -> None:
            if run.cancelled.is_set():
                raise Cancelled
            put({"type": "progress", "done": done, "total": total,
                 "elapsed": time.perf_counter() - started})  # fmt: skip

        try:
            result = ablate(model.get(), image[None], labels[None, None], color=request.color,
                            target=target, score="prob", progress=report)  # fmt: skip
        except Cancelled:
            put({"type": "cancelled", "done": 0, "elapsed": time.perf_counter() - started})
            return
        painted = result.maps(result.scores)[0, 0, 0].float().cpu()
        run.heatmap, run.buckets = painted, result.describe()
        put({"type": "cells", "index": None, "values": painted.reshape(-1).tolist(),
             "done": count, "total": count, "queries": result.queries,
             "elapsed": time.perf_counter() - started, "stage": 0})  # fmt: skip
        elapsed, computing = time.perf_counter() - started, time.perf_counter() - prepared
        run.summary = {"elapsed": elapsed, "compute_seconds": computing,
                       "queries": result.queries, "naive_seconds": naive,
                       "speedup": naive / computing}  # fmt: skip
        put({"type": "done", **run.summary})

    def _naive_seconds(self, name: str, module: Any, image: Tensor) -> float:
        """Seconds of full re-inference per query, measured once per model and shape."""
        key = (name, tuple(image.shape))
        if key not in self._naive:
            self._naive[key] = _naive_seconds(module, image)
        return self._naive[key]

    # -- SQL ------------------------------------------------------------------------------------

    def sql(self, query: str, limit: int = SQL_ROWS) -> dict[str, Any]:
        """Run a statement on the session (in the compute thread, after the runs before it);
        the first ``limit`` rows, heatmaps as lists."""
        return self.submit_sql(query, limit=limit).result()

    def submit_sql(self, query: Any, client: str = "default", limit: int = SQL_ROWS) -> Future:
        """``sql`` as a future (what the server awaits, holding no thread meanwhile); the
        client's previous statement, if it is still waiting or running, is cancelled."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("write a statement")
        statement = _Statement(self.session.interrupt)
        with self._state:
            previous = self._statements.get(client)
            if previous is not None:
                previous.stop("cancelled: a newer statement from this page replaced it")
            self._statements[client] = statement
        return self.compute.submit(lambda: self._sql(query, limit, statement))

    def cancel_sql(self, client: str) -> bool:
        """Stop the client's waiting or running statement; whether there was one."""
        with self._state:
            statement = self._statements.get(client)
        return statement is not None and statement.stop("cancelled")

    def _sql(self, query: str, limit: int, statement: _Statement) -> dict[str, Any]:
        def check(done: int, total: int) -> None:  # between batches of an occlusion scan
            if statement.stopped.is_set():
                raise Cancelled

        why = (f"stopped after {self.sql_seconds:g} s, the SQL box's time limit (kql serve "
               "--sql-timeout raises it)")  # fmt: skip
        timer = threading.Timer(self.sql_seconds, statement.stop, (why,))
        timer.daemon = True
        with self._session_lock:
            try:
                statement.begin()
                timer.start()
                result = self.session.sql(
                    query, progress=check, max_rows=limit, cancel=statement.stopped
                )
            except (Cancelled, KryptonError):
                if statement.stopped.is_set():  # DuckDB's interrupt, or between batches
                    raise InvalidInputError(f"the statement was {statement.why}") from None
                raise
            finally:
                timer.cancel()
                statement.end()
        return {
            "columns": result.columns,
            "rows": [[_plain(value) for value in row] for row in result.rows[:limit]],
            "count": result.total_rows,
            "truncated": result.total_rows > limit,
        }

    def close(self) -> None:
        for run in list(self._runs.values()):
            run.cancel()
        for waiting in list(self._statements.values()):
            waiting.stop("cancelled: the server is stopping")
        self.compute.stopped.set()
        self._uploads.cleanup()


class _Statement:
    """A SQL-box statement's stop flag. ``stop`` (a cancel, the time limit, a newer statement)
    sets it and, while the statement runs, interrupts DuckDB's part of it until it ends; an
    occlusion scan sees the flag between batches."""

    def __init__(self, interrupt: Callable[[], None]) -> None:
        self.stopped = threading.Event()
        self.why = ""
        self._interrupt = interrupt
        self._lock = threading.Lock()
        self._running = self._finished = False

    def begin(self) -> None:
        with self._lock:
            if self.stopped.is_set():
                raise Cancelled
            self._running = True

    def end(self) -> None:
        with self._lock:
            self._running, self._finished = False, True

    def stop(self, why: str) -> bool:
        """Stop the statement (once; the first reason stays); whether it was still going."""
        with self._lock:
            if self.stopped.is_set() or self._finished:
                return False
            self.why = why
            self.stopped.set()
            if self._running:  # until it ends: DuckDB ignores an interrupt between queries
                threading.Thread(target=self._interrupting, daemon=True).start()
            return True

    def _interrupting(self) -> None:
        while True:
            with self._lock:
                if not self._running:
                    return
                self._interrupt()  # interrupts DuckDB only while it runs this statement
            time.sleep(0.05)


def _create(folder: Path, stem: str, data: bytes) -> str:
    """Write ``data`` as a new ``<stem>[_n].png`` in ``folder`` and return the name: the file is
    created exclusively, so two uploads of one name never share a file."""
    count = 1
    while True:
        name = stem if count == 1 else f"{stem}_{count}"
        try:
            descriptor = os.open(folder / f"{name}.png", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            count += 1
            continue
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return name


def _naive_seconds(module: Any, image: Tensor) -> float:
    """Seconds of full re-inference per occluded copy, from a timed batched forward of a few
    (the page's naive estimate is this times the queries)."""
    batch = 8
    copies = image[None].float().repeat(batch, 1, 1, 1)
    with torch.no_grad():
        module(copies[:1])  # warm
        started = time.perf_counter()
        module(copies)
        seconds = time.perf_counter() - started
    return seconds / batch


def _label(names: Any, index: int) -> str:
    return str(names[index]) if names is not None and index < len(names) else str(index)


def _plain(value: Any) -> Any:
    r"""A JSON value: a heatmap tensor as nested lists, NaN and ±inf as null, dates and times in
    ISO 8601, decimals as numbers (as text where a float would round them), bytes as DuckDB
    prints them, structs, maps and intervals as objects, anything else as its text.

    >>> _plain([decimal.Decimal("1.50"), datetime.date(2026, 1, 2), b"a\x00", float("nan")])
    [1.5, '2026-01-02', 'a\\x00', None]
    """
    if isinstance(value, Tensor):
        value = value.tolist()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, pa.MonthDayNano):  # an interval
        return {"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        number = float(value)
        return number if decimal.Decimal(repr(number)) == value else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02x}" for b in data)
    return str(value)
