"""``kql.tune``: measure how τ (and drill-down) trade quality on sample images, for the
profile that ``ssim => …`` queries read. Above every plan: it compiles and runs them."""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor, nn

from compiler.errors import InvalidInputError
from krypton_ql import options as check
from krypton_ql import quality
from krypton_ql.api import compile as compile_plan
from krypton_ql.profile import Profile

log = logging.getLogger(__name__)

TAUS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)  # the paper's τ grid


def tune(
    model: nn.Module,
    sample_images: Tensor,
    *,
    ssim: float = 0.9,
    patch: int = 16,
    stride: int = 4,
    taus: tuple[float, ...] = TAUS,
    criterion: str = "min",
    drilldown: float | None = None,
    drilldown_mode: str = "lattice",
    speedups: tuple[float, ...] = (5.0, 4.0, 3.0, 2.0),
    **options: Any,
) -> Profile:
    """Measure how τ (and, with ``drilldown=r``, drill-down speedup targets) trade quality on
    ``sample_images`` ``[N, C, H, W]``, and return the profile ``ssim=`` queries read.

    SSIM falls as τ falls, so a bisection over ``taus`` (sorted high to low) finds the smallest
    τ whose ``criterion`` over the samples (their minimum by default) meets ``ssim``, running
    about log2(len(taus)) approximate heatmaps per image instead of all of them; the exact
    heatmaps are computed once. With ``drilldown``, speedup targets are tried from the largest
    down at the chosen τ until one meets ``ssim``.
    """
    images = check.images(sample_images)
    target = check.fraction("ssim", ssim)
    assert target is not None
    if criterion not in ("min", "mean"):
        raise InvalidInputError(f"criterion must be 'min' or 'mean', got {criterion!r}")
    shape = tuple(images.shape[1:])
    exact = compile_plan(model, shape, patch=patch, stride=stride, **options).run(images)
    profile = Profile(patch, stride, criterion, drilldown_mode=drilldown_mode)

    def measure(tau: float) -> float:
        key = f"{tau:g}"
        if key not in profile.taus:
            plan = compile_plan(model, shape, patch=patch, stride=stride, tau=tau, **options)
            approx = plan.run(images)
            profile.taus[key] = [quality.ssim(e, a) for e, a in zip(exact, approx)]
            log.info("τ=%s: SSIM %s", key, profile.taus[key])
        return profile.score(profile.taus[key])

    ordered = sorted(taus, reverse=True)
    low, high = 0, len(ordered) - 1  # invariant: every τ before `low` meets the target
    profile.taus["1"] = [1.0] * len(images)
    while low <= high:
        middle = (low + high) // 2
        if measure(ordered[middle]) >= target:
            low = middle + 1
        else:
            high = middle - 1
    tau = profile.tau_for(target)
    if drilldown is not None:
        profile.drilldown_ratio = check.fraction("drilldown", drilldown)
        for speedup in sorted(speedups, reverse=True):
            plan = compile_plan(
                model, shape, patch=patch, stride=stride, tau=tau, drilldown=drilldown,
                speedup=speedup, drilldown_mode=drilldown_mode, **options,
            )  # fmt: skip
            approx = plan.run(images)
            scores = [quality.ssim(e, a) for e, a in zip(exact, approx)]
            profile.drilldown[f"{speedup:g}"] = scores
            if profile.score(scores) >= target:
                break
    return profile
