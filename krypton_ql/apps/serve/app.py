"""The HTTP side of ``kql serve``: a Starlette app over an ``Explorer``.

Endpoints (JSON unless said otherwise; errors are ``{"error": message}`` with status 400, the
CLI's messages, never a traceback):

- ``GET /`` the page; ``GET /static/…`` its script and style (shipped in the package);
- ``GET /api/config`` photos, models, defaults, limits and the colour map of ``kql.render``;
- ``GET /api/photo?name=`` the image as the model sees it (PNG); ``GET /api/predict?name=&model=``
  the top-5 classes; ``POST /api/upload`` (multipart, field ``file``) adds a photo;
- ``POST /api/runs`` starts a run (``RunRequest``; header ``X-KQL-Client`` names the page, whose
  previous run it cancels), ``GET /api/runs/{id}/events`` streams its events (server-sent
  events; a stream closed before the run ends cancels it), ``GET /api/runs/{id}`` its state,
  ``POST /api/runs/{id}/cancel``; ``GET /api/runs/{id}/heatmap.{png,npy,csv}``,
  ``/plan.png`` and ``/plan.txt`` once it is done;
- ``POST /api/sql`` runs a query against the session (``{"query": …}``; the session is
  sandboxed: no files, no network, queries only, a time limit), ``POST /api/sql/cancel`` stops
  the page's running statement.

Every request passes ``krypton_ql.apps.serve.security``'s checks first: this server's own host and
origin, JSON bodies (multipart for the upload), bounded sizes, and with a ``token`` the token:
``?token=`` in the URL (the page passes it on), the ``X-KQL-Token`` header, or the cookie the
page sets.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import queue
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from compiler.errors import InvalidInputError, KryptonError
from krypton_ql.apps.serve import security
from krypton_ql.apps.serve.explorer import MAX_UPLOAD_BYTES, Explorer

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(explorer: Explorer, token: str | None = None, host: str = "127.0.0.1") -> Starlette:
    """The app for a server listening on ``host``; ``token`` (None: none needed) guards every
    route."""
    api = Api(explorer, token)
    routes = [
        Route("/", api.index),
        Route("/api/config", api.config),
        Route("/api/photo", api.photo),
        Route("/api/predict", api.predict),
        Route("/api/upload", api.upload, methods=["POST"]),
        Route("/api/runs", api.start, methods=["POST"]),
        Route("/api/runs/{run}", api.status),
        Route("/api/runs/{run}/events", api.events),
        Route("/api/runs/{run}/cancel", api.cancel, methods=["POST"]),
        Route("/api/runs/{run}/heatmap.{kind}", api.download),
        Route("/api/runs/{run}/plan.{kind}", api.plan_picture),
        Route("/api/sql", api.sql, methods=["POST"]),
        Route("/api/sql/cancel", api.cancel_sql, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={
        KryptonError: _error, InvalidInputError: _error, Exception: _internal,
        404: _not_found, 405: _not_allowed,
    })  # fmt: skip
    # Added last runs first: the token, then host and origin, then the body's size.
    app.add_middleware(security.Limits, limit=_body_limit(explorer))
    app.add_middleware(security.SameOrigin, host=host)
    if token is not None:
        app.add_middleware(security.TokenCheck, token=token)
    return app


class Api:
    """The endpoints (see the module docstring), over one ``Explorer``."""

    def __init__(self, explorer: Explorer, token: str | None) -> None:
        self.explorer, self.token = explorer, token

    async def index(self, request: Request) -> Response:
        headers = {
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",  # no other page frames the explorer (clickjacking)
            "Content-Security-Policy": "frame-ancestors 'none'",
        }
        response = FileResponse(STATIC / "index.html", headers=headers)
        if self.token is not None:
            response.set_cookie("kql_token", self.token, httponly=True, samesite="strict")
        return response

    async def config(self, request: Request) -> Response:
        from matplotlib import colormaps

        lut = (colormaps["jet_r"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(int)
        explorer = self.explorer
        return JSONResponse({
            "photos": explorer.photos(), "models": explorer.models, "images": explorer.images,
            "defaults": {"patch": 16, "stride": 4, "color": 0.0, "mode": "exact",
                         "tau": 0.8, "ssim": 0.9},
            "max_upload_bytes": explorer.max_upload_bytes,
            "colormap": lut.tolist(), "alpha": 0.55,
        })  # fmt: skip

    async def photo(self, request: Request) -> Response:
        name, model = _query(request, "name"), request.query_params.get("model", "model")
        png = await asyncio.to_thread(self.explorer.photo_png, name, model)
        return Response(png, media_type="image/png")

    async def predict(self, request: Request) -> Response:
        name, model = _query(request, "name"), request.query_params.get("model", "model")
        return JSONResponse({"top": await asyncio.to_thread(self.explorer.predict, name, model)})

    async def upload(self, request: Request) -> Response:  # its size: security.Limits
        async with request.form(max_files=1, max_fields=4) as form:
            item = form.get("file")
            if item is None or isinstance(item, str):
                raise InvalidInputError("send the photo as the form field 'file'")
            data = await item.read(self.explorer.max_upload_bytes + 1)
            filename = item.filename or "upload"
        name = await asyncio.to_thread(self.explorer.upload, filename, data)
        return JSONResponse({"name": name, "photos": self.explorer.photos()})

    async def start(self, request: Request) -> Response:
        data = await security.json_body(request)
        run = self.explorer.start(data, _client(request))
        return JSONResponse({"run": run.id})

    async def events(self, request: Request) -> Response:
        run = self.explorer.run(request.path_params["run"])

        async def stream():
            ended = False
            try:
                while True:
                    try:
                        event = await asyncio.to_thread(run.events.get, True, 0.5)
                    except queue.Empty:
                        if await request.is_disconnected():
                            return
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
                    if event["type"] in ("done", "cancelled", "error"):
                        ended = True
                        return
            finally:
                if not ended:  # the page went away mid-run: nobody is listening any more
                    run.cancel()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def status(self, request: Request) -> Response:
        run = self.explorer.run(request.path_params["run"])
        return JSONResponse({"run": run.id, "finished": run.finished.is_set(),
                             "cancelled": run.cancelled.is_set(), **run.summary})  # fmt: skip

    async def cancel(self, request: Request) -> Response:
        run = self.explorer.run(request.path_params["run"])
        run.cancel()
        return JSONResponse({"run": run.id, "cancelled": True})

    async def download(self, request: Request) -> Response:
        run = self.explorer.run(request.path_params["run"])
        kind = request.path_params["kind"]
        if run.heatmap is None:
            raise InvalidInputError("the run has no heatmap yet")
        heatmap = run.heatmap
        stem = f"{run.request.image}-{run.id}"
        if kind == "npy":
            buffer = io.BytesIO()
            np.save(buffer, heatmap.numpy())
            return _attachment(buffer.getvalue(), "application/octet-stream", f"{stem}.npy")
        if kind == "csv" and run.labels is not None:  # a segment run: one row per segment
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(["segment", "area", "prob", "drop"])
            flat, values = run.labels.reshape(-1).numpy(), heatmap.reshape(-1).numpy()
            clean = float(run.base or 0.0)  # set with the heatmap
            for segment in np.unique(flat):
                where = flat == segment
                value = float(values[where][0])
                writer.writerow([int(segment), int(where.sum()), f"{value:.6g}",
                                 f"{clean - value:.6g}"])  # fmt: skip
            return _attachment(text.getvalue().encode(), "text/csv", f"{stem}.csv")
        if kind == "csv":
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(["row", "col", "y", "x", "prob", "drop"])
            stride, base = run.request.stride, run.base
            for (row, col), value in np.ndenumerate(heatmap.numpy()):
                if np.isfinite(value):
                    writer.writerow([row, col, row * stride, col * stride, f"{value:.6g}",
                                     f"{base - value:.6g}"])  # fmt: skip
            return _attachment(text.getvalue().encode(), "text/csv", f"{stem}.csv")
        if kind == "png":
            png = await asyncio.to_thread(_overlay, run)
            return _attachment(png, "image/png", f"{stem}.png")
        raise InvalidInputError(f"no download {kind!r} (png, npy, csv)")

    async def plan_picture(self, request: Request) -> Response:
        run = self.explorer.run(request.path_params["run"])
        if run.labels is not None:  # a segment run: its bucket plans, as text
            if request.path_params["kind"] == "txt":
                return PlainTextResponse(run.buckets or "the segments are being bucketed …")
            raise InvalidInputError("a segment run's plans are listed as text (plan.txt)")
        if run.plan is None:
            raise InvalidInputError("the run has no plan yet")
        if request.path_params["kind"] == "txt":
            return PlainTextResponse(run.plan.explain())
        png = await asyncio.to_thread(_plan_png, run.plan)
        return Response(png, media_type="image/png")

    async def sql(self, request: Request) -> Response:
        data = await security.json_body(request)
        query = data.get("query") if isinstance(data, dict) else None
        future = self.explorer.submit_sql(query, _client(request))
        return JSONResponse(await asyncio.wrap_future(future))

    async def cancel_sql(self, request: Request) -> Response:
        return JSONResponse({"cancelled": self.explorer.cancel_sql(_client(request))})


def _body_limit(explorer: Explorer) -> Any:
    """Each route's body limit, with how to raise it where one can."""

    def limit(path: str) -> tuple[int, str]:
        if path == "/api/upload":
            hint = f"photos up to {explorer.max_upload_bytes:,} bytes; --max-upload-mb raises it"
            return explorer.max_upload_bytes + security.UPLOAD_SLACK, hint
        if path == "/api/sql":
            return security.SQL_LIMIT, "a statement"
        return security.JSON_LIMIT, "a request"

    return limit


def _client(request: Request) -> str:
    """The page a request comes from (its runs and statements are its own)."""
    return request.headers.get("x-kql-client", "default")[:64]


def _query(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise InvalidInputError(f"missing ?{name}=")
    return value


def _attachment(data: bytes, media: str, filename: str) -> Response:
    disposition = f'attachment; filename="{filename}"'
    return Response(data, media_type=media, headers={"Content-Disposition": disposition})


def _overlay(run: Any) -> bytes:
    from krypton_ql.render import overlay_png, segments_png

    patch, stride = run.request.patch, run.request.stride
    title = f"{run.request.image}: {run.label} (p = {run.base:.3f})"
    if run.labels is not None:  # a segment run: the segments outlined and painted
        with tempfile.TemporaryDirectory() as folder:
            path = segments_png(Path(folder) / "heatmap.png", run.photo, run.heatmap,
                                run.labels, run.base, title)  # fmt: skip
            return path.read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        path = overlay_png(
            Path(folder) / "heatmap.png", run.photo, run.heatmap, run.base,
            f"{run.request.image}: {run.label} (p = {run.base:.3f})",
            (patch, patch), (stride, stride),
        )  # fmt: skip
        return path.read_bytes()


def _plan_png(plan: Any) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return plan.explain_png(Path(folder) / "plan.png").read_bytes()


async def _error(request: Request, error: Exception) -> Response:
    status = 413 if isinstance(error, security.BodyTooLarge) else 400
    return JSONResponse({"error": str(error)}, status_code=status)


async def _internal(request: Request, error: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)


async def _not_found(request: Request, error: Exception) -> Response:
    return JSONResponse({"error": f"no such page: {request.url.path}"}, status_code=404)


async def _not_allowed(request: Request, error: Exception) -> Response:
    message = f"{request.method} is not allowed on {request.url.path}"
    return JSONResponse({"error": message}, status_code=405)


__all__ = ["MAX_UPLOAD_BYTES", "create_app"]
