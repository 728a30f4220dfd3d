"""One heatmap the explorer's page asks for: the request (``RunRequest``, checked), the query
statement that computes the same heatmap, the positions of a region, the coarse-to-fine order,
and ``stream``, which evaluates a run's stages and reports each as an event."""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from compiler.errors import InvalidInputError
from krypton_ql.plans.refine import RefinePlan

MODES = ("exact", "tau", "ssim")
HIDES = ("patches", "segments")  # a patch slid over a grid, or each SLIC superpixel in turn
UPLOADS = "uploads"  # the image set of the photos uploaded to this server
MAX_CELLS = 250_000  # positions in one run (patch 1 stride 1 on 500×500)


@dataclass(frozen=True)
class RunRequest:
    """One heatmap the page asks for: an image (of the server's image set or the uploads), the
    model, the occlusion options, the class (None: the predicted one), the mode (``exact``,
    ``tau`` with ``value`` = τ, ``ssim`` with ``value`` = the target) and an optional region
    ``(y0, x0, y1, x1)`` in input pixels (half-open): the positions whose patch centre is in it.
    ``hide="segments"`` hides each of about ``segments`` SLIC superpixels in turn instead of a
    patch (exact, the whole photo)."""

    image: str
    images: str
    model: str = "model"
    patch: int = 16
    stride: int = 4
    color: float = 0.0
    target: int | None = None
    mode: str = "exact"
    value: float | None = None
    region: tuple[int, int, int, int] | None = None
    hide: str = "patches"
    segments: int = 100

    @classmethod
    def parse(cls, data: Any, images: str) -> RunRequest:
        """A request from the page's JSON, checked; anything wrong is an InvalidInputError."""
        if not isinstance(data, dict):
            raise InvalidInputError("a run request is a JSON object")
        unknown = set(data) - {f for f in cls.__dataclass_fields__ if f != "images"}
        if unknown:
            raise InvalidInputError(f"unknown run options: {', '.join(sorted(unknown))}")
        image = data.get("image")
        if not isinstance(image, str) or not image:
            raise InvalidInputError("choose an image")
        source = UPLOADS if image.startswith(f"{UPLOADS}/") else images
        mode = data.get("mode", "exact")
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        value = _number(data.get("value"), "value") if mode != "exact" else None
        if mode == "tau" and not (value is not None and 0 < value <= 1):
            raise InvalidInputError(f"tau must be in (0, 1], got {value}")
        if mode == "ssim" and not (value is not None and 0 < value < 1):
            raise InvalidInputError(f"an ssim target must be in (0, 1), got {value}")
        hide = data.get("hide", "patches")
        if hide not in HIDES:
            raise InvalidInputError(f"hide must be one of {', '.join(HIDES)}, got {hide!r}")
        segments = _integer(data.get("segments", 100), "segments")
        if hide == "segments" and not 2 <= segments <= 2000:
            raise InvalidInputError(f"segments must be between 2 and 2000, got {segments}")
        if hide == "segments" and mode != "exact":
            raise InvalidInputError("segments are hidden exactly: choose the exact mode")
        if hide == "segments" and data.get("region") is not None:
            raise InvalidInputError(
                "a region restricts patch positions; segments cover the whole photo"
            )
        target = data.get("target")
        region = data.get("region")
        if region is not None:
            if not (isinstance(region, list | tuple) and len(region) == 4):
                raise InvalidInputError("a region is [y0, x0, y1, x1]")
            region = tuple(_integer(v, "region") for v in region)
        return cls(
            image=image.removeprefix(f"{UPLOADS}/"),
            images=source,
            model=str(data.get("model", "model")),
            patch=_integer(data.get("patch", 16), "patch"),
            stride=_integer(data.get("stride", 4), "stride"),
            color=_number(data.get("color", 0.0), "color"),
            target=None if target in (None, "") else _integer(target, "class"),
            mode=mode,
            value=value,
            region=region,
            hide=hide,
            segments=segments,
        )

    @property
    def page_name(self) -> str:
        return f"{UPLOADS}/{self.image}" if self.images == UPLOADS else self.image

    def options(self) -> dict[str, Any]:
        """``kql.compile``'s occlusion and approximation options."""
        options: dict[str, Any] = dict(patch=self.patch, stride=self.stride, color=self.color)
        if self.mode == "tau":
            options["tau"] = self.value
        elif self.mode == "ssim":
            options["ssim"] = self.value
        return options


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidInputError(f"{name} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    return int(number)


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidInputError(f"{name} must be finite, got {value!r}")
    return number


def statement(request: RunRequest, target: int) -> str:
    """The query-language statement that computes the run's heatmap, to paste into ``kql
    query`` / ``kql shell`` (with the server's ``--images`` and ``--model``).

    >>> print(statement(RunRequest("o'neil", "photos", region=(0, 0, 64, 32)), 3))
    SELECT image, class, label, heatmap(prob) AS heatmap
    FROM occlusion(photos, model, patch => 16, stride => 4)
    WHERE image = 'o''neil' AND class = 3 AND y + 8 BETWEEN 0 AND 63 AND x + 8 BETWEEN 0 AND 31
    GROUP BY image, class, label
    """
    options = [f"patch => {request.patch}", f"stride => {request.stride}"]
    if request.hide == "segments":
        options = ["segments => 'slic'", f"n_segments => {request.segments}"]
    if request.color != 0.0:
        options.append(f"color => {request.color:g}")
    if request.mode == "tau":
        options.append(f"tau => {request.value:g}")
    elif request.mode == "ssim":
        options.append(f"ssim => {request.value:g}")
    quoted = request.image.replace("'", "''")
    where = [f"image = '{quoted}'", f"class = {target}"]
    if request.region is not None:
        y0, x0, y1, x1 = request.region
        half = request.patch // 2
        where += [f"y + {half} BETWEEN {y0} AND {y1 - 1}", f"x + {half} BETWEEN {x0} AND {x1 - 1}"]
    return (
        "SELECT image, class, label, heatmap(prob) AS heatmap\n"
        f"FROM occlusion({request.images}, {request.model}, {', '.join(options)})\n"
        f"WHERE {' AND '.join(where)}\n"
        "GROUP BY image, class, label"
    )


def region_positions(plan: Any, region: tuple[int, int, int, int] | None) -> np.ndarray:
    """Grid indices whose patch centre ``(y + Ph//2, x + Pw//2)`` lies in the region (all of
    them without one); an empty selection is an error."""
    positions = plan.positions
    index = np.arange(len(positions))
    if region is None:
        return index
    y0, x0, y1, x1 = region
    patch = plan.occlusion.patch
    cy, cx = positions.top + patch.h // 2, positions.left + patch.w // 2
    keep = (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
    if not keep.any():
        raise InvalidInputError(
            f"no patch centre lies in the region {list(region)}: draw a larger one or use a "
            "smaller stride"
        )
    return index[keep]


def coarse_to_fine(index: np.ndarray, cols: int) -> list[np.ndarray]:
    """The positions in three stages: every 4th row and column, every 2nd, the rest.

    >>> [s.tolist() for s in coarse_to_fine(np.arange(16), 4)]
    [[0], [2, 8, 10], [1, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 15]]
    """
    rows, columns = index // cols, index % cols
    coarse = (rows % 4 == 0) & (columns % 4 == 0)
    middle = (rows % 2 == 0) & (columns % 2 == 0) & ~coarse
    stages = [index[coarse], index[middle], index[~coarse & ~middle]]
    return [stage for stage in stages if len(stage)]


@dataclass
class Run:
    """A heatmap being computed: its events (a thread-safe queue), its cancel flag and, when
    done, the heatmap (NaN outside the computed positions) and what the page shows."""

    id: str
    client: str
    request: RunRequest
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    plan: Any = None
    heatmap: Tensor | None = None
    photo: Tensor | None = None
    base: float | None = None
    label: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    labels: Tensor | None = None  # a segment run's superpixels ([H, W] labels)
    buckets: str = ""  # a segment run's plans (AblationResult.describe)

    def cancel(self) -> None:
        self.cancelled.set()


class Cancelled(Exception):
    """Raised from a progress callback to stop an evaluation (a run's, or a statement's)."""


def _chunk(plan: Any) -> int:
    physical = getattr(plan, "physical", None)
    size = physical.batching.batch_size if physical is not None else 64
    return max(16, min(size, 256))


def stream(
    run: Run,
    plan: Any,
    image: Tensor,
    target: int,
    index: np.ndarray,
    put: Callable[[dict[str, Any]], None],
    started: float,
) -> int | None:
    """Evaluate the run's positions ``index`` coarse to fine, in chunks (an SSIM target: in one
    evaluation, whose guard needs the whole heatmap; a coarse-to-fine refinement puts every
    round's reconstruction as it goes), putting a ``cells`` event per chunk; the queries run,
    or None when the run was cancelled (its ``cancelled`` event put)."""
    rows, cols = plan.grid
    heatmap = torch.full((rows * cols,), float("nan"))
    ssim = run.request.mode == "ssim"
    refine = getattr(plan, "inner", plan)  # an SSIM target's chosen plan
    if ssim and isinstance(refine, RefinePlan):  # stream each round's reconstruction

        def observe(
            _image: int, level: int, values: np.ndarray, known: np.ndarray, estimate: float | None
        ) -> None:
            event = {
                "type": "cells", "index": index.tolist(), "values": values[0][index].tolist(),
                "done": int(known[index].sum()), "total": len(index), "queries": int(known.sum()),
                "elapsed": time.perf_counter() - started, "stage": level,
            }  # fmt: skip
            if estimate is not None:
                event["ssim_estimate"] = estimate
            put(event)

        refine.observer = observe
    try:
        return _stream(run, plan, image, target, index, put, started, heatmap, ssim)
    finally:
        if ssim and isinstance(refine, RefinePlan):
            refine.observer = None


def _stream(
    run: Run, plan: Any, image: Tensor, target: int, index: np.ndarray,
    put: Callable[[dict[str, Any]], None], started: float, heatmap: Tensor, ssim: bool,
) -> int | None:  # fmt: skip
    rows, cols = plan.grid
    done = queries = 0
    for level, chosen in enumerate(_chunks(plan, index, cols, ssim)):

        def report(finished: int, total: int, offset: int = done) -> None:
            if run.cancelled.is_set():  # between two batches of an evaluation
                raise Cancelled
            if ssim:  # the one evaluation's progress
                put({"type": "progress", "done": offset + finished, "total": len(index),
                     "elapsed": time.perf_counter() - started})  # fmt: skip

        picked = torch.from_numpy(chosen)
        try:
            if run.cancelled.is_set():
                raise Cancelled
            result = plan.evaluate(image, targets=torch.tensor([[target]]), positions=picked,
                                   progress=report, reuse_clean=True)  # fmt: skip
        except Cancelled:
            run.heatmap = heatmap.reshape(rows, cols)  # what was computed, NaN elsewhere
            put({"type": "cancelled", "done": done, "elapsed": time.perf_counter() - started})
            return None
        values = result.heatmaps[0, 0].reshape(-1)[picked].float()
        heatmap[picked] = values
        done, queries = done + len(chosen), queries + result.queries
        event = {
            "type": "cells", "index": chosen.tolist(), "values": values.tolist(),
            "done": done, "total": len(index), "queries": queries,
            "elapsed": time.perf_counter() - started, "stage": level,
        }  # fmt: skip
        if getattr(result, "ssim_estimate", None) is not None:
            event["ssim_estimate"] = float(result.ssim_estimate[0, 0])
            event["reruns"] = int(result.reruns)
        put(event)
    run.heatmap = heatmap.reshape(rows, cols)
    return queries


def _chunks(plan: Any, index: np.ndarray, cols: int, whole: bool) -> list[np.ndarray]:
    """The evaluations of a run: coarse to fine in chunks of a batch or so; ``whole``: one."""
    if whole:
        return [index]
    size = _chunk(plan)
    return [
        stage[i : i + size]
        for stage in coarse_to_fine(index, cols)
        for i in range(0, len(stage), size)
    ]
