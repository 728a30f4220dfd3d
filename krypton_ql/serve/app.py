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
- ``POST /api/sql`` runs a statement against the session (``{"query": …}``).

With a ``token``, every request needs it: ``?token=`` in the URL (the page passes it on), the
``X-KQL-Token`` header, or the cookie the page sets.
"""

from __future__ import annotations

import asyncio
import csv
import hmac
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
from krypton_ql.serve.explorer import MAX_UPLOAD_BYTES, Explorer

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def create_app(explorer: Explorer, token: str | None = None) -> Starlette:
    """The app; ``token`` (None: none needed) guards every route."""

    async def index(request: Request) -> Response:
        response = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        if token is not None:
            response.set_cookie("kql_token", token, httponly=True, samesite="strict")
        return response

    async def config(request: Request) -> Response:
        from matplotlib import colormaps

        lut = (colormaps["jet_r"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(int)
        return JSONResponse({
            "photos": explorer.photos(), "models": explorer.models, "images": explorer.images,
            "defaults": {"patch": 16, "stride": 4, "color": 0.0, "mode": "exact",
                         "tau": 0.8, "ssim": 0.9},
            "max_upload_bytes": explorer.max_upload_bytes,
            "colormap": lut.tolist(), "alpha": 0.55,
        })  # fmt: skip

    async def photo(request: Request) -> Response:
        name, model = _query(request, "name"), request.query_params.get("model", "model")
        png = await asyncio.to_thread(explorer.photo_png, name, model)
        return Response(png, media_type="image/png")

    async def predict(request: Request) -> Response:
        name, model = _query(request, "name"), request.query_params.get("model", "model")
        return JSONResponse({"top": await asyncio.to_thread(explorer.predict, name, model)})

    async def upload(request: Request) -> Response:
        length = request.headers.get("content-length", "0")
        length = int(length) if length.isdigit() else 0  # the body's size is checked anyway
        if length > explorer.max_upload_bytes + 64 * 1024:
            raise InvalidInputError(
                f"the upload has {length:,} bytes, above the limit of "
                f"{explorer.max_upload_bytes:,} (kql serve --max-upload-mb raises it)"
            )
        async with request.form(max_files=1, max_fields=4) as form:
            item = form.get("file")
            if item is None or isinstance(item, str):
                raise InvalidInputError("send the photo as the form field 'file'")
            data = await item.read(explorer.max_upload_bytes + 1)
            filename = item.filename or "upload"
        name = await asyncio.to_thread(explorer.upload, filename, data)
        return JSONResponse({"name": name, "photos": explorer.photos()})

    async def start(request: Request) -> Response:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidInputError("a run request is a JSON object") from None
        client = request.headers.get("x-kql-client", "default")[:64]
        run = explorer.start(data, client)
        return JSONResponse({"run": run.id})

    async def events(request: Request) -> Response:
        run = explorer.run(request.path_params["run"])

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

    async def status(request: Request) -> Response:
        run = explorer.run(request.path_params["run"])
        return JSONResponse({"run": run.id, "finished": run.finished.is_set(),
                             "cancelled": run.cancelled.is_set(), **run.summary})  # fmt: skip

    async def cancel(request: Request) -> Response:
        run = explorer.run(request.path_params["run"])
        run.cancel()
        return JSONResponse({"run": run.id, "cancelled": True})

    async def download(request: Request) -> Response:
        run = explorer.run(request.path_params["run"])
        kind = request.path_params["kind"]
        if run.heatmap is None:
            raise InvalidInputError("the run has no heatmap yet")
        heatmap = run.heatmap
        stem = f"{run.request.image}-{run.id}"
        if kind == "npy":
            buffer = io.BytesIO()
            np.save(buffer, heatmap.numpy())
            return _attachment(buffer.getvalue(), "application/octet-stream", f"{stem}.npy")
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

    async def plan_picture(request: Request) -> Response:
        run = explorer.run(request.path_params["run"])
        if run.plan is None:
            raise InvalidInputError("the run has no plan yet")
        if request.path_params["kind"] == "txt":
            return PlainTextResponse(run.plan.explain())
        png = await asyncio.to_thread(_plan_png, run.plan)
        return Response(png, media_type="image/png")

    async def sql(request: Request) -> Response:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidInputError('send {"query": "…"}') from None
        query = data.get("query") if isinstance(data, dict) else None
        return JSONResponse(await asyncio.wrap_future(explorer.submit_sql(query)))

    routes = [
        Route("/", index),
        Route("/api/config", config),
        Route("/api/photo", photo),
        Route("/api/predict", predict),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/api/runs", start, methods=["POST"]),
        Route("/api/runs/{run}", status),
        Route("/api/runs/{run}/events", events),
        Route("/api/runs/{run}/cancel", cancel, methods=["POST"]),
        Route("/api/runs/{run}/heatmap.{kind}", download),
        Route("/api/runs/{run}/plan.{kind}", plan_picture),
        Route("/api/sql", sql, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={
        KryptonError: _error, InvalidInputError: _error, Exception: _internal,
        404: _not_found,
    })  # fmt: skip
    if token is not None:
        app.add_middleware(_TokenCheck, token=token)
    return app


def _query(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise InvalidInputError(f"missing ?{name}=")
    return value


def _attachment(data: bytes, media: str, filename: str) -> Response:
    disposition = f'attachment; filename="{filename}"'
    return Response(data, media_type=media, headers={"Content-Disposition": disposition})


def _overlay(run: Any) -> bytes:
    from krypton_ql.render import overlay_png

    patch, stride = run.request.patch, run.request.stride
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
    return JSONResponse({"error": str(error)}, status_code=400)


async def _internal(request: Request, error: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)


async def _not_found(request: Request, error: Exception) -> Response:
    return JSONResponse({"error": f"no such page: {request.url.path}"}, status_code=404)


class _TokenCheck:
    """Every request carries the token (query, header or cookie), compared in constant time."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = (
            request.query_params.get("token")
            or request.headers.get("x-kql-token")
            or request.cookies.get("kql_token")
            or ""
        )
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            response = JSONResponse(
                {"error": "this server needs its token: open the URL kql serve printed"},
                status_code=403,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


__all__ = ["MAX_UPLOAD_BYTES", "create_app"]
