"""``kql.tune``: measure how τ (and drill-down) trade quality on sample images, for the
profile that ``ssim => …`` queries read. Above every plan: it compiles and runs them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compiler.errors import InvalidInputError
from compiler.types import Size
from krypton_ql import options as check
from krypton_ql import quality
from krypton_ql.options import Options
from krypton_ql.plans.base import HeatmapPlan
from krypton_ql.plans.build import build_plan
from krypton_ql.quality.profile import Profile

log = logging.getLogger(__name__)

TAUS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)  # the paper's τ grid


# The default tuning set (``tuning_images``): scikit-image's photos that the held-out checks
# do not use, each as it is, mirrored, and centre-cropped to three quarters — 24 images.
TUNING_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "colorwheel", "immunohistochemistry", "coins",
    "moon",
)  # fmt: skip


def tuning_photos() -> list[tuple[str, np.ndarray]]:
    """The default tuning set as named ``H×W×3`` uint8 photos (offline: scikit-image's)."""
    import skimage.data

    photos = []
    for name in TUNING_PHOTOS:
        photo = getattr(skimage.data, name)()
        photo = photo if photo.ndim == 3 else np.stack([photo] * 3, -1)
        height, width = photo.shape[:2]
        crop = photo[height // 8 : height - height // 8, width // 8 : width - width // 8]
        photos += [(name, photo), (f"{name}-mirrored", photo[:, ::-1]), (f"{name}-crop", crop)]
    return [(name, np.ascontiguousarray(photo[..., :3])) for name, photo in photos]


def tuning_images(transform: Callable[[np.ndarray], Tensor] | None = None) -> Tensor:
    """The default tuning set ``[24, C, H, W]`` through ``transform`` (default: the built-in
    model's ``models.preprocess``; give a torchvision model its ``imagenet_transform``)."""
    from krypton_ql import models

    transform = transform or models.preprocess
    return torch.stack([transform(photo) for _, photo in tuning_photos()])


def tune(
    model: nn.Module,
    sample_images: Tensor | None = None,
    *,
    ssim: float = 0.9,
    patch: int | tuple[int, ...] = 16,
    stride: int | tuple[int, ...] = 4,
    spatial_dims: int | None = None,
    taus: tuple[float, ...] = TAUS,
    criterion: str = "min",
    drilldown: float | None = None,
    drilldown_mode: str = "lattice",
    speedups: tuple[float, ...] = (5.0, 4.0, 3.0, 2.0),
    margin: float = 0.02,
    **options: Any,
) -> Profile:
    """Measure how τ (and, with ``drilldown=r``, drill-down speedup targets) trade quality on
    ``sample_images`` ``[N, C, H, W]`` (default: ``tuning_images()``, 24 photos through the
    built-in model's preprocessing) — or signals ``[N, C, L]`` and volumes ``[N, C, D, H, W]``,
    whose spatial axes ``patch``, ``stride`` or ``spatial_dims`` state as ``kql.compile``
    reads them — and return the profile ``ssim=`` queries read. A volume's SSIM is 3-D
    (``quality.ssim``: a 7×7×7 window).

    Every τ of ``taus`` is measured (SSIM need not fall as τ falls: a larger τ can be the
    worse one), each against the exact heatmaps computed once; the profile chooses the
    smallest τ whose ``criterion`` over the samples (their minimum by default) meets ``ssim``
    with ``margin`` to spare (``Profile.margin``: the guard re-runs images below the target,
    so a τ on the edge costs more than it saves), and ``profile.report(ssim)`` shows every
    candidate with its margin. With ``drilldown``,
    speedup targets are tried from the largest down at the chosen τ until one meets ``ssim``.
    """
    if sample_images is None:
        images = tuning_images()
    else:
        rank = sample_images.dim() if isinstance(sample_images, Tensor) else 0
        d = check.spatial_rank(rank, patch, stride, spatial_dims)
        images = check.images(sample_images, d=d)
    target = check.fraction("ssim", ssim)
    assert target is not None
    if criterion not in ("min", "mean"):
        raise InvalidInputError(f"criterion must be 'min' or 'mean', got {criterion!r}")
    shape = tuple(images.shape[1:])
    d = images.dim() - 2

    def compile_plan(**keywords: Any) -> HeatmapPlan:
        built = Options.build(shape, patch=patch, stride=stride, spatial_dims=d, **keywords)
        return build_plan(model, built)

    exact_plan = compile_plan(**options)
    exact = exact_plan.run(images)
    if not 0 <= margin < 1:
        raise InvalidInputError(f"margin must be in [0, 1), got {margin!r}")
    workload = exact_plan.occlusion
    profile = Profile(
        _per_axis(workload.patch), _per_axis(workload.stride), criterion,
        drilldown_mode=drilldown_mode, margin=margin, model=_described(model),
        input_shape=list(shape), target=target, images=len(images),
    )  # fmt: skip
    profile.taus["1"] = [1.0] * len(images)
    for tau in sorted(taus, reverse=True):
        key = f"{tau:g}"
        if key in profile.taus:
            continue
        plan = compile_plan(tau=tau, **options)
        approx = plan.run(images)
        profile.taus[key] = [quality.ssim(e, a) for e, a in zip(exact, approx)]
        log.info("τ=%s: SSIM %s", key, profile.taus[key])
    tau = profile.tau_for(target)
    log.info("%s", profile.report(target))
    if drilldown is not None:
        profile.drilldown_ratio = check.fraction("drilldown", drilldown)
        for speedup in sorted(speedups, reverse=True):
            plan = compile_plan(tau=tau, drilldown=drilldown, speedup=speedup,
                                drilldown_mode=drilldown_mode, **options)  # fmt: skip
            approx = plan.run(images)
            scores = [quality.ssim(e, a) for e, a in zip(exact, approx)]
            profile.drilldown[f"{speedup:g}"] = scores
            if profile.score(scores) >= target:
                break
    return profile


def _described(model: nn.Module) -> str:
    """The model a profile was tuned on: its class, parameter count and weights' digest."""
    from krypton_ql import fingerprint

    count = sum(p.numel() for p in model.parameters())
    digest = fingerprint.weights_digest(model)[:12]
    return f"{type(model).__name__} ({count:,} parameters, weights {digest})"


def _per_axis(size: Size) -> int | list[int]:
    """A profile's patch or stride: an int where every axis has it, else one per axis."""
    values = [int(v) for v in size]
    return values[0] if len(set(values)) == 1 else values
