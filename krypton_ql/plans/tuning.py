"""``kql.tune``: measure how τ (and drill-down) trade quality on sample images, for the
profile that ``ssim => …`` queries read. Above every plan: it compiles and runs them."""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable
from pathlib import Path
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
from krypton_ql.quality import planner
from krypton_ql.quality.profile import Profile

log = logging.getLogger(__name__)

TAUS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)  # the paper's τ grid
# What ``tune`` measures by default: every other τ of the paper's grid (each costs a run over
# the samples; the smallest is the cheapest base for a refinement).
TUNED_TAUS = (0.8, 0.6, 0.4)
MAX_BASE_COST = 0.6  # a τ that costs more leaves a refinement over it nothing to gain
TAU_STOP = 0.1  # τs stop after the first whose mean SSIM is this far below the target
# Profiles of the built-in model that ship with the package (``shipped``).
SHIPPED = Path(__file__).resolve().parent.parent / "models" / "profiles"


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
    taus: tuple[float, ...] = TUNED_TAUS,
    criterion: str = "min",
    drilldown: float | None = None,
    drilldown_mode: str = "lattice",
    speedups: tuple[float, ...] = (5.0, 4.0, 3.0, 2.0),
    margin: float = 0.02,
    periods: tuple[float, ...] = (2.0, 3.0, 4.0, 6.0, 8.0),
    fresh: bool = False,
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

    Candidates for the planner (``quality.planner``): each τ's time per query over exact's;
    τs are tried from the largest down and stop after the first whose mean SSIM falls more
    than ``TAU_STOP`` below the target (SSIM falls with τ, ``benchmarks/tau_monotone.py``) —
    except the smallest, the cheapest base for a refinement, always measured.
    Every coarse-to-fine refinement from a lattice of one cell in each of ``periods`` is
    replayed on the stored heatmaps (exact, and the smallest τ whose mean meets the target):
    no model runs for them.

    The built-in model's profiles for its default workloads ship with the package
    (``SHIPPED``, each saying how it was made in ``made_by``): tuning the built-in model on
    the default set at such a workload, with default settings, returns the shipped profile
    at once (logged); ``fresh=True`` measures again.
    """
    defaults = (TUNED_TAUS, (2.0, 3.0, 4.0, 6.0, 8.0), 0.02, "min")
    settings = (tuple(taus), tuple(periods), margin, criterion)
    default_set = sample_images is None or _is_default_set(sample_images)
    if default_set and not fresh and not options and drilldown is None:
        from krypton_ql import models

        found = None
        if settings == defaults:
            found = shipped(model, patch, stride, [3, models.CROP, models.CROP], ssim)
        if found is not None:
            log.info("kql.tune: the shipped profile fits (%s; made by %s); fresh=True "
                     "measures again", found.fitted(), found.made_by)  # fmt: skip
            return found
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
    began = time.perf_counter()
    exact = exact_plan.run(images)
    exact_seconds = time.perf_counter() - began
    if not 0 <= margin < 1:
        raise InvalidInputError(f"margin must be in [0, 1), got {margin!r}")
    workload = exact_plan.occlusion
    profile = Profile(
        _per_axis(workload.patch), _per_axis(workload.stride), criterion,
        drilldown_mode=drilldown_mode, margin=margin, model=_described(model),
        input_shape=list(shape), target=target, images=len(images),
    )  # fmt: skip
    profile.taus["1"] = [1.0] * len(images)
    profile.costs["1"] = 1.0
    approximations: dict[float, Tensor] = {}
    stopped = False
    for tau in sorted(taus, reverse=True):
        key = f"{tau:g}"
        if key in profile.taus or (stopped and tau != min(taus)):
            continue
        plan = compile_plan(tau=tau, **options)
        began = time.perf_counter()
        approx = plan.run(images)
        profile.costs[key] = (time.perf_counter() - began) / exact_seconds
        approximations[tau] = approx
        profile.taus[key] = [quality.ssim(e, a) for e, a in zip(exact, approx)]
        log.info("τ=%s: SSIM %s, time %.2f of exact", key, profile.taus[key], profile.costs[key])
        stopped = stopped or bool(np.mean(profile.taus[key]) < target - TAU_STOP)
    tau = profile.tau_for(target)
    log.info("%s", profile.report(target))
    if periods:
        _replay_refinements(profile, exact, approximations, periods, exact_seconds / len(images))
        log.info("%s", planner.choose(profile, target).explain())
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


def measure_costs(
    model: nn.Module, profile: Profile, images: Tensor | None = None, **options: Any
) -> dict[str, float]:
    """Each τ of ``profile.costs``: its time per heatmap over exact's on this machine, timed
    image by image with exact and every τ in turn (so that a machine busy for a while slows
    them alike) on ``images`` (default: the first four of ``tuning_images()``). A profile's
    costs are the tuning machine's; ``profile.costs = measure_costs(model, profile)`` fits them
    to another (a GPU, a busier CPU)."""
    images = tuning_images()[:4] if images is None else images
    shape = tuple(images.shape[1:])
    patch, stride = profile.patch, profile.stride
    plans = {
        key: build_plan(model, Options.build(shape, patch=patch, stride=stride,
                                             tau=float(key), **options))
        for key in profile.costs
    }  # fmt: skip
    seconds = dict.fromkeys(plans, 0.0)
    for image in images:
        for key, plan in plans.items():
            began = time.perf_counter()
            plan.run(image, progress=False)
            seconds[key] += time.perf_counter() - began
    return {key: value / seconds["1"] for key, value in seconds.items()}


def _replay_refinements(
    profile: Profile,
    exact: Tensor,
    approximations: dict[float, Tensor],
    periods: tuple[float, ...],
    seconds_per_image: float,
) -> None:
    """Replay every coarse-to-fine refinement (``plans.refine.coarse_to_fine``) on the stored
    heatmaps — alone, and over each τ that took at most ``MAX_BASE_COST`` of exact's time —
    and keep what each cost and reached, per image (``Profile.refine``)."""
    from krypton_ql.options import Refine
    from krypton_ql.plans.refine import coarse_to_fine

    assert profile.target is not None
    target = profile.target
    profile.refine_target = target
    costs = {float(t): c for t, c in profile.costs.items()}
    bases: dict[str, Tensor | None] = {"": None}
    for tau, approx in sorted(approximations.items()):
        if costs[tau] <= MAX_BASE_COST:
            bases[f"@{tau:g}"] = approx
    truth = exact.detach().double().cpu().numpy()
    for suffix, maps in bases.items():
        values = None if maps is None else maps.detach().double().cpu().numpy()
        for period in periods:
            settings = Refine(target, float(period), profile.check)
            runs: dict[str, list[float]] = {
                "ssim": [], "queries": [], "exact": [], "overhead": [], "estimate": []
            }  # fmt: skip
            for n in range(len(truth)):
                grid, size = truth[n].shape, truth[n].size
                exact_at, base_at = (
                    _lookup(truth[n]),
                    None if values is None else _lookup(values[n]),
                )
                began = time.perf_counter()
                outcome = coarse_to_fine(grid, settings, exact_at, base_at, seed=n)
                runs["overhead"].append((time.perf_counter() - began) / seconds_per_image)
                runs["ssim"].append(quality.ssim(truth[n], outcome.heatmaps[0]))
                runs["queries"].append(outcome.queries / size)
                runs["exact"].append(outcome.exact_queries / size)
                runs["estimate"].append(outcome.estimate)
            profile.refine[f"{period:g}{suffix}"] = runs
            log.info("coarse-to-fine from 1/%g%s: SSIM %s, positions %s", period, suffix,
                     [f"{v:.3f}" for v in runs["ssim"]],
                     [f"{q + e:.2f}" for q, e in zip(runs["queries"], runs["exact"])])  # fmt: skip


def _is_default_set(images: Any) -> bool:
    """Whether ``images`` are the default tuning set through the built-in model's
    preprocessing (``tuning_images()``, passed explicitly)."""
    if not isinstance(images, Tensor) or tuple(images.shape) != (
        len(TUNING_PHOTOS) * 3,
        3,
        224,
        224,
    ):
        return False
    return bool(torch.equal(images.cpu(), tuning_images()))


def _lookup(heatmap: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A stored heatmap's scores at given row-major cells, ``[1, k]``."""
    flat = heatmap.reshape(1, -1)
    return lambda cells: flat[:, cells]


def shipped(
    model: nn.Module, patch: Any, stride: Any, input_shape: Any, ssim: float | None = None
) -> Profile | None:
    """The shipped profile (``SHIPPED``) of this model (class, parameter count, weights'
    digest) at this patch, stride and input shape — replayed at SSIM ``ssim`` where given —
    or None."""
    if not isinstance(model, nn.Module):
        return None
    patch, stride = _plain(patch), _plain(stride)
    for text in _shipped_texts():
        profile = Profile.from_json(text)  # a fresh copy: the caller may change it
        fits = (
            profile.patch == patch and profile.stride == stride
            and (ssim is None or profile.refine_target == ssim)
            and list(profile.input_shape or ()) == list(input_shape)
        )  # fmt: skip
        if fits and profile.model == _described(model):
            return profile
    return None


@functools.cache
def _shipped_texts() -> tuple[str, ...]:
    """The shipped profiles' JSON, read once (package data)."""
    if not SHIPPED.is_dir():
        return ()
    return tuple(path.read_text() for path in sorted(SHIPPED.glob("*.json")))


def with_shipped_profile(
    model: nn.Module, input_shape: Any, options: dict[str, Any]
) -> dict[str, Any]:
    """``options`` with the shipped profile (``shipped``) for an ``ssim`` target that gives no
    ``profile``, where one fits the model and workload (unchanged otherwise)."""
    if options.get("ssim") is None or options.get("profile") is not None:
        return options
    shape = tuple(input_shape)[-3:] if input_shape is not None else ()
    found = shipped(model, options.get("patch"), options.get("stride", 1), shape)
    if found is None:
        return options
    log.info("ssim=%s: the shipped profile (%s)", options["ssim"], found.fitted())
    return {**options, "profile": found}


def _described(model: nn.Module) -> str:
    """The model a profile was tuned on: its class, parameter count and weights' digest (kept
    per model while its weights stay the same version: hashing them takes a while)."""
    from krypton_ql import fingerprint

    version = fingerprint.versions(model)
    kept = _DESCRIPTIONS.get(model)
    if kept is not None and kept[0] == version:
        return kept[1]
    count = sum(p.numel() for p in model.parameters())
    digest = fingerprint.weights_digest(model)[:12]
    described = f"{type(model).__name__} ({count:,} parameters, weights {digest})"
    _DESCRIPTIONS[model] = (version, described)
    return described


_DESCRIPTIONS: weakref.WeakKeyDictionary[nn.Module, tuple[Any, str]] = weakref.WeakKeyDictionary()


def _plain(value: Any) -> Any:
    """A patch or stride as a profile keeps it: an int where every axis has it, else a list.

    >>> _plain(16), _plain((16, 16)), _plain([2, 8, 8])
    (16, 16, [2, 8, 8])
    """
    if isinstance(value, int) or value is None:
        return value
    values = [int(v) for v in value]
    return values[0] if len(set(values)) == 1 else values


def _per_axis(size: Size) -> int | list[int]:
    """A profile's patch or stride: an int where every axis has it, else one per axis."""
    values = [int(v) for v in size]
    return values[0] if len(set(values)) == 1 else values
