"""The Python API's functions: compile a workload into a plan, compute a heatmap (incrementally
or by naive re-inference), explain a plan. A facade: the plans live in ``krypton_ql.plans``,
the options in ``krypton_ql.options``; a model with map outputs is explained through the
region scores of ``krypton_ql.integrations.segmentation``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Unpack

import torch
from torch import Tensor, nn

from compiler.errors import InvalidInputError, ModelInputError
from krypton_ql import options as check
from krypton_ql.integrations import segmentation
from krypton_ql.options import APPROXIMATE, Options, PlanKeywords
from krypton_ql.plans.base import HeatmapPlan, ProgressArg
from krypton_ql.plans.build import build_plan
from krypton_ql.plans.cache import PLANS
from krypton_ql.plans.naive import naive_class_heatmap
from krypton_ql.plans.regions import DEFAULT_MAX_PLANS, DEFAULT_RATIO, AblationResult, ablate
from krypton_ql.plans.tuning import with_shipped_profile
from runtime.fill import Fill


def compile(
    model: nn.Module, input_shape: Any, *, patch: Any, **options: Unpack[PlanKeywords]
) -> HeatmapPlan:
    """Compile an incremental occlusion plan for images of ``input_shape`` ``(C, H, W)``: exact
    unless an approximation is asked for. ``patch`` and ``options`` are ``Options.build``'s
    (stride, color, target, score, batch size and memory budget, backend, precision, τ,
    drill-down, SSIM target with its profile and guard)."""
    keywords = with_shipped_profile(model, input_shape, {**options, "patch": patch})
    return build_plan(model, Options.build(input_shape, **keywords))


def occlusion_heatmap(
    model: nn.Module,
    image: Tensor,
    *,
    patch: Any,
    progress: ProgressArg = "auto",
    region: Any = None,
    output: Any = None,
    fill: Fill | None = None,
    **options: Unpack[PlanKeywords],
) -> Tensor:
    """Occlusion heatmap, computed incrementally: ``[rows, cols]`` for ``[C,H,W]``,
    ``[N, rows, cols]`` for ``[N,C,H,W]``. Cell ``(i, j)`` is the target's score (softmax
    probability, or the raw output with ``score="logit"``) with the patch at ``(i·Sy, j·Sx)``.
    Exact unless ``tau``, ``drilldown``, ``speedup`` or ``ssim`` asks for an approximation
    (the options are ``Options.build``'s).

    A model whose output is a score map ``[N, K, H', W']`` (or a dict / tuple holding one:
    ``output=`` names the entry, default ``"out"`` or the only map) is explained by region
    scores (``krypton_ql.integrations.segmentation``): the cell is the mean over ``region`` — a
    boolean mask ``[H, W]`` or a box ``(y0, x0, y1, x1)``, default the pixels the clean image
    predicts as ``target`` — of the class's per-pixel probability (or logit), the map resized
    to the input size as torchvision's heads do (bilinear). For one image, ``target`` may list
    several classes (each with its own default region): ``[T, rows, cols]``, all in one pass.

    ``fill`` (a ``kql.Fill``) puts other content than ``color`` in the windows: a per-pixel
    baseline (``Fill.per_pixel``), a function of the window's own values ``x·mul + add``
    (``Fill.window``), or the window scaled by its mean (``Fill.scaled_by_mean``)."""
    d, keywords = _rank(image, patch, options)
    images = check.images(image, d=d)
    with _rank_hint(image, patch, options, d):
        if region is not None or output is not None or segmentation.returns_map(
            check.model(model), images, output
        ):  # fmt: skip
            _no_fill(fill)
            maps = _by_region(_incremental, _incremental_classes, model, images, patch, progress,
                              region, output, keywords)  # fmt: skip
            return maps[0] if image.dim() == d + 1 else maps
        return _incremental(model, image, patch, progress, {**keywords, "fill": fill})


def naive_heatmap(
    model: nn.Module,
    image: Tensor,
    *,
    patch: Any,
    progress: ProgressArg = "auto",
    region: Any = None,
    output: Any = None,
    fill: Fill | None = None,
    **options: Unpack[PlanKeywords],
) -> Tensor:
    """``occlusion_heatmap`` by full re-inference of every occluded copy, with the user's
    model: the baseline, and an oracle independent of the compiler. Same signature; the plan's
    own options (backend, conv, …) do not apply, and approximation is refused."""
    asked = [name for name in sorted(APPROXIMATE) if options.get(name) is not None]
    if asked:
        raise InvalidInputError(
            f"naive_heatmap re-runs the model exactly: {asked[0]} is an option of the "
            "incremental plan (occlusion_heatmap)", option=asked[0],
        )  # fmt: skip
    d, keywords = _rank(image, patch, options)
    images = check.images(image, d=d)
    with _rank_hint(image, patch, options, d):
        if region is not None or output is not None or segmentation.returns_map(
            check.model(model), images, output
        ):  # fmt: skip
            _no_fill(fill)
            maps = _by_region(_naive, None, model, images, patch, progress, region, output,
                              keywords)  # fmt: skip
            return maps[0] if image.dim() == d + 1 else maps
        return _naive(model, image, patch, progress, {**keywords, "fill": fill})


def ablation_scores(
    model: nn.Module,
    images: Tensor,
    segments: Any,
    *,
    color: Any = 0.0,
    fill: Fill | None = None,
    target: Any = None,
    score: str = "prob",
    spatial_dims: int | None = None,
    progress: ProgressArg = "auto",
    batch_size: int | None = None,
    bucket_ratio: float = DEFAULT_RATIO,
    max_plans: int | None = DEFAULT_MAX_PLANS,
    backend: str = "auto",
) -> AblationResult:
    """Each segment of ``segments`` hidden in turn, computed incrementally: an
    ``AblationResult`` with the target's score per image × segment (``.scores`` ``[N, 1, S]``,
    ``.drops`` = clean − ablated, ``.ids`` the segment labels) and ``.maps()`` painting a
    value on each segment's pixels.

    ``images``: ``[C, *spatial]`` or ``[N, C, *spatial]`` (``spatial_dims`` where the rank
    could be read two ways, as ``occlusion_heatmap`` reads it); ``segments``: integer labels
    ``[*spatial]`` shared by every image, ``[N, *spatial]`` one per image, or broadcastable to
    the input (per channel) — ``krypton_ql.segments`` makes them with scikit-image. A segment
    may have any shape (thin, disconnected, touching the border); it runs in the plan of its
    bounding box's size bucket (``bucket_ratio``: how far apart the box sizes are;
    ``max_plans``: how many plans at most, merging the buckets that waste least — see
    ``compiler.regions``; ``.describe()`` lists the plans). The segment's pixels take
    ``color`` (or ``fill``'s content: a per-pixel baseline with ``Fill.per_pixel``), the rest
    of its box keeps the image. ``target``: a class, one per image, or None for each image's
    prediction; ``score``: ``"prob"`` or ``"logit"``. Exact."""
    labels = torch.as_tensor(segments) if not isinstance(segments, Tensor) else segments
    d = spatial_dims or _segment_rank(images, labels)
    batch = check.images(images, d=d)
    if labels.dim() == d + 1 and len(labels) == len(batch):
        labels = labels[:, None]  # [N, *spatial]: one label image per input
    return ablate(
        model, batch, labels, fill=fill, color=color, target=target, score=score,
        ratio=bucket_ratio, max_plans=max_plans, progress=progress, batch_size=batch_size,
        backend=backend,
    )  # fmt: skip


def _segment_rank(images: Any, labels: Tensor) -> int:
    """The spatial axes of ``images`` that ``labels`` cover whole: one input ``[C, *spatial]``
    or a batch ``[N, C, *spatial]`` whose last axes the labels match (an image where both
    readings fit).

    >>> _segment_rank(torch.zeros(2, 2, 40), torch.zeros(40)), _segment_rank(
    ...     torch.zeros(3, 8, 8), torch.zeros(8, 8))
    (1, 2)
    """
    rank = images.dim() if isinstance(images, Tensor) else 0
    fits = [
        d for d in (rank - 1, rank - 2)
        if 1 <= d <= 3 and labels.dim() >= d and labels.shape[-d:] == images.shape[-d:]
    ]  # fmt: skip
    if not fits:
        raise InvalidInputError(
            f"segments of shape {list(labels.shape)} do not cover the spatial axes of inputs "
            f"{list(getattr(images, 'shape', []))}: give one label per cell ([*spatial], or "
            "[N, *spatial] per input), or say spatial_dims="
        )
    return 2 if 2 in fits else fits[0]


def explain(model: nn.Module, input_shape: Any, **options: Any) -> str:
    """The plan ``compile(model, input_shape, **options)`` would run, as text (``verbose``:
    after every rule; ``sql``: with the plan as SQL)."""
    verbose = options.pop("verbose", False)
    sql = options.pop("sql", False)
    options = with_shipped_profile(model, input_shape, options)
    built = Options.build(input_shape, **options)
    uses = PLANS.uses(model, built)
    kept = f"kept, served {uses} call{'s' if uses != 1 else ''}" if uses else "none kept yet"
    text = build_plan(model, built).explain(verbose=verbose, sql=sql)
    return f"{text.rstrip()}\n\n== plan cache ==\n{kept} (kql.plan_cache)\n"


Compute = Callable[[nn.Module, Tensor, Any, ProgressArg, Mapping[str, Any]], Tensor]


def _rank(image: Any, patch: Any, options: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The input's number of spatial axes (``check.spatial_rank``), and the options with it
    stated (so that every plan reads the per-image shape alike)."""
    rank = image.dim() if isinstance(image, Tensor) else 0
    if isinstance(image, Tensor) and not 2 <= rank <= 5:
        raise InvalidInputError(
            f"image must be a signal, an image or a volume ([C, L], [C, H, W], [C, D, H, W]; "
            f"with a batch axis in front, one more), got rank {rank} ({list(image.shape)})"
        )
    d = check.spatial_rank(rank, patch, options.get("stride"), options.get("spatial_dims"))
    if isinstance(image, Tensor) and rank not in (d + 1, d + 2):
        given = "spatial_dims" if options.get("spatial_dims") is not None else "patch"
        value = options.get("spatial_dims") if given == "spatial_dims" else patch
        raise InvalidInputError(
            f"{given} {value!r} gives {d} spatial axes, so the input must have {d + 1} axes "
            f"(or {d + 2} for a batch); it has {rank}: {list(image.shape)}",
            option=given,
        )
    return d, {**options, "spatial_dims": d}


@contextmanager
def _rank_hint(image: Any, patch: Any, options: Mapping[str, Any], d: int) -> Iterator[None]:
    """A model that rejects the input's shape, where the number of spatial axes followed from
    the rank (an int patch), gets told how to ask for another."""
    try:
        yield
    except ModelInputError as error:
        if not isinstance(image, Tensor):
            raise
        if options.get("spatial_dims") is not None or not isinstance(patch, int):
            given = "spatial_dims" if options.get("spatial_dims") is not None else "patch"
            value = options.get("spatial_dims", patch) if given == "spatial_dims" else patch
            hint = (
                f"{given} {value!r} reads it as {d} spatial axes; give one patch size per "
                f"axis of the model's input"
            )
        else:
            hint = check.rank_hint(d)
        raise ModelInputError(f"{error}; {hint}") from error


def _incremental(
    model: nn.Module, image: Tensor, patch: Any, progress: ProgressArg, options: Mapping[str, Any]
) -> Tensor:
    images = check.images(image, d=options.get("spatial_dims"))
    keywords = dict(options)
    fill = keywords.pop("fill", None)
    keywords = with_shipped_profile(model, images.shape[1:], {**keywords, "patch": patch})
    built = Options.build(tuple(images.shape[1:]), **keywords)
    with PLANS.borrow(model, built) as plan:
        return plan.run(image, progress=progress, fill=fill)


def _no_fill(fill: Fill | None) -> None:
    if fill is not None:
        raise InvalidInputError(
            "fill= takes models that score classes; a map-output model's windows take color=",
            option="fill",
        )


def _incremental_classes(
    model: nn.Module, image: Tensor, patch: Any, progress: ProgressArg, options: Mapping[str, Any]
) -> Tensor:
    """``[T, *grid]``: the heatmaps of one input for the classes ``options["target"]``, in one
    pass."""
    images = check.images(image, d=options.get("spatial_dims"))
    keywords = dict(options)
    classes = keywords.pop("target")
    keywords = with_shipped_profile(model, images.shape[1:], {**keywords, "patch": patch})
    built = Options.build(tuple(images.shape[1:]), **keywords)
    table = torch.tensor([classes], device=images.device)
    with PLANS.borrow(model, built) as plan:
        return plan.evaluate(images, targets=table, progress=progress).heatmaps[0]


def _naive(
    model: nn.Module, image: Tensor, patch: Any, progress: ProgressArg, options: Mapping[str, Any]
) -> Tensor:
    return naive_class_heatmap(model, image, patch=patch, progress=progress, **options)


def _by_region(
    compute: Compute,
    several: Compute | None,
    model: nn.Module,
    images: Tensor,
    patch: Any,
    progress: ProgressArg,
    region: Any,
    output: Any,
    options: Mapping[str, Any],
) -> Tensor:
    """``[N, rows, cols]`` (or ``[1, T, rows, cols]`` for one image and several classes) of a
    map-output model: each of segmentation's region jobs computed as class scores of its
    wrapper (``several`` computes one image's classes in one pass; without it, class by
    class)."""
    keywords = dict(options)
    score, target = keywords.pop("score", "prob"), keywords.pop("target", None)
    jobs = segmentation.region_jobs(model, images, region=region, output=output, target=target,
                                    score=score)  # fmt: skip
    keywords["score"] = "logit"  # the wrapper's scores are the region scores
    maps = []
    for job in jobs:
        if job.classes is None:
            maps.append(
                compute(job.model, job.images, patch, progress, {**keywords, "target": job.target})
            )
        elif several is not None:
            maps.append(several(job.model, job.images[0], patch, progress,
                                {**keywords, "target": job.classes})[None])  # fmt: skip
        else:
            per_class = [compute(job.model, job.images[0], patch, progress,
                                 {**keywords, "target": c}) for c in job.classes]  # fmt: skip
            maps.append(torch.stack(per_class)[None])
    shaped = [m if m.dim() >= 3 else m[None] for m in maps]
    return torch.cat(shaped)
