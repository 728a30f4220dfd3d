"""Every user-facing option, validated once: ``Options`` is what the Python API, the naive
baseline, the query language, the CLI (through the query language) and the Captum drop-in
build from their own spellings; every bad value is an ``InvalidInputError`` that names the
option (``error.option``), which the query language turns into a caret under it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from numbers import Real
from typing import Any, TypedDict, TypeVar

import torch

from compiler.drilldown import DrillDown, DrillDownMode
from compiler.errors import InvalidInputError
from compiler.options import CompileOptions, LinearStrategy
from compiler.types import Score, Size
from krypton_ql.quality import planner
from krypton_ql.quality.planner import Choice
from krypton_ql.quality.profile import Profile
from runtime.fill import Fill
from runtime.measure import ConvChoice
from runtime.resolve import Backend

# The options that ask for an approximation (explain marks it ≈), and those that only shape
# one; without the first an occlusion is exact whatever the second say.
APPROXIMATE = frozenset({"tau", "drilldown", "speedup", "ssim"})
APPROXIMATION_SETTINGS = frozenset({"drilldown_mode", "guard", "profile"})

DEFAULT_RATIO = 0.25  # the paper's default drill-down fraction (ImageNet)
DEFAULT_TARGET = 3.0  # the paper's default drill-down speedup


@dataclass(frozen=True, slots=True)
class Occlusion:
    """The validated occlusion parameters of one workload."""

    patch: Size
    stride: Size
    color: tuple[float, ...]
    score: Score
    # Explicit window starts per axis (their product is the grid) instead of the stride's:
    # a placement such as MONAI's sliding windows (``Options.at_starts``).
    starts: tuple[tuple[int, ...], ...] | None = None
    # One window per query at these first cells (``starts[a][q]`` along axis ``a``), in no
    # grid: regions of any shape, each in its bucket's box (``Options.at_windows``).
    windows: tuple[tuple[int, ...], ...] | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


SPATIAL_RANKS = (1, 2, 3)  # signals, images, volumes (and clips)
_RANK_NAMES = {1: "signal [C, L]", 2: "image [C, H, W]", 3: "volume [C, D, H, W]"}


def size_of(name: str, value: Any, d: int = 2) -> Size:
    """An int (the same along every axis) or ``d`` positive ints, one per spatial axis.

    >>> size_of("patch", 4, 3), size_of("patch", (2, 3))
    (Size(4, 4, 4), Size(2, 3))
    """
    if _is_int(value):
        values: tuple[int, ...] = (value,) * d
    elif isinstance(value, Sequence) and len(value) == d and all(_is_int(v) for v in value):
        values = tuple(int(v) for v in value)
    else:
        axes = "a pair of ints" if d == 2 else f"{d} ints (one per spatial axis)"
        raise InvalidInputError(f"{name} must be an int or {axes}, got {value!r}", option=name)
    if min(values) < 1:
        raise InvalidInputError(f"{name} must be at least 1, got {value!r}", option=name)
    return Size(*values)


def spatial_rank(rank: int, patch: Any, stride: Any = None, spatial_dims: Any = None) -> int:
    """How many spatial axes an input of ``rank`` axes has: ``spatial_dims`` when given, else
    the length of a ``patch`` (or ``stride``) given as a tuple, else — from an int patch — an
    image (2) where the rank allows it: ``[C, H, W]`` or a batch ``[N, C, H, W]``. A rank
    that no image has is read unambiguously: 2 is a signal ``[C, L]``, 5 a batch of volumes.

    >>> spatial_rank(4, 16), spatial_rank(4, (4, 4, 4)), spatial_rank(3, 8, spatial_dims=1)
    (2, 3, 1)
    >>> spatial_rank(2, 16), spatial_rank(5, 4)
    (1, 3)
    """
    if spatial_dims is not None:
        if not _is_int(spatial_dims) or spatial_dims not in SPATIAL_RANKS:
            raise InvalidInputError(
                f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}", option="spatial_dims"
            )
        for name, value in (("patch", patch), ("stride", stride)):
            if _is_sequence(value) and len(value) != spatial_dims:
                raise InvalidInputError(
                    f"{name} {tuple(value)!r} has {len(value)} values but spatial_dims="
                    f"{spatial_dims}: give one per spatial axis (or an int for all)",
                    option=name,
                )
        return int(spatial_dims)
    for name, value in (("patch", patch), ("stride", stride)):
        if _is_sequence(value):
            if not 1 <= len(value) <= 3:
                raise InvalidInputError(
                    f"{name} must be an int or one int per spatial axis (1, 2 or 3 of them), "
                    f"got {value!r}",
                    option=name,
                )
            return len(value)
    return {2: 1, 3: 2, 4: 2, 5: 3}.get(rank, 2)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def fill(value: Any) -> Fill:
    """A ``kql.Fill`` (``runtime.fill``): the windows' content beyond a colour."""
    if not isinstance(value, Fill):
        raise InvalidInputError(
            f"fill must be a kql.Fill (Fill.per_pixel, Fill.window, Fill.scaled_by_mean), got "
            f"{type(value).__name__}",
            option="fill",
        )
    return value


def rank_hint(d: int) -> str:
    """How to ask for another number of spatial axes than an int patch implies.

    >>> print(rank_hint(2))
    an int patch reads it as an image [C, H, W] (or a batch of them); for a signal [C, L] give \
patch as a tuple of 1 int or spatial_dims=1, for a volume [C, D, H, W] a tuple of 3 ints or \
spatial_dims=3
    """
    others = [k for k in SPATIAL_RANKS if k != d]
    first, second = (f"{_article(k)} {_RANK_NAMES[k]}" for k in others)
    one, two = others
    return (
        f"an int patch reads it as {_article(d)} {_RANK_NAMES[d]} (or a batch of them); for "
        f"{first} give patch as a tuple of {one} int{'s' if one > 1 else ''} or "
        f"spatial_dims={one}, for {second} a tuple of {two} int{'s' if two > 1 else ''} or "
        f"spatial_dims={two}"
    )


def _article(d: int) -> str:
    return "an" if _RANK_NAMES[d][0] in "aeiou" else "a"


def colour(value: Any, channels: int) -> tuple[float, ...]:
    """A scalar or one value per channel, finite, in model-input space."""
    if isinstance(value, Real) and not isinstance(value, bool):
        values: tuple[float, ...] = (float(value),) * channels
    elif isinstance(value, Sequence) and all(
        isinstance(v, Real) and not isinstance(v, bool) for v in value
    ):
        if len(value) != channels:
            raise InvalidInputError(
                f"color has {len(value)} values but the image has {channels} channels",
                option="color",
            )
        values = tuple(float(v) for v in value)
    else:
        raise InvalidInputError(
            f"color must be a number or one number per channel, got {value!r}", option="color"
        )
    if not all(math.isfinite(v) for v in values):
        raise InvalidInputError(f"color must be finite, got {value!r}", option="color")
    largest = torch.finfo(torch.float32).max
    if any(abs(v) > largest for v in values):
        raise InvalidInputError(
            f"color {value!r} overflows float32 (largest {largest:.3e})", option="color"
        )
    return values


E = TypeVar("E", bound=enum.Enum)


def choice(name: str, value: Any, kind: type[E]) -> E:
    """The member of ``kind`` that ``value`` is or spells.

    >>> choice("score", "logit", Score)
    <Score.LOGIT: 'logit'>
    """
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        names = [repr(m.value) for m in kind]
        listed = ", ".join(names[:-1]) + " or " + names[-1]
        raise InvalidInputError(f"{name} must be {listed}, got {value!r}", option=name) from None


def score(value: Any) -> Score:
    return choice("score", value, Score)


def image_shape(value: Any, d: int = 2) -> tuple[int, ...]:
    """``(C, *spatial)`` of ``d`` spatial axes, or ``(N, C, *spatial)`` whose ``N`` is
    ignored."""
    if isinstance(value, torch.Size | tuple | list) and all(_is_int(v) for v in value):
        dims = tuple(int(v) for v in value)
        if len(dims) in (d + 1, d + 2) and min(dims) >= 1:
            return dims[-(d + 1) :]
    axes = {1: "(C, L)", 2: "(C, H, W)", 3: "(C, D, H, W)"}[d]
    raise InvalidInputError(f"input_shape must be {axes} of positive ints, got {value!r}")


def occlusion(
    shape: tuple[int, ...], patch: Any, stride: Any, color: Any, score_: Any
) -> Occlusion:
    """Validate the occlusion parameters against an input shape ``(C, *spatial)``."""
    channels, cells = shape[0], Size(*shape[1:])
    patch_size = size_of("patch", patch, cells.d)
    stride_size = size_of("stride", stride, cells.d)
    noun = {1: "signal", 2: "image", 3: "volume"}[cells.d]
    if any(p > n for p, n in zip(patch_size, cells)):
        raise InvalidInputError(
            f"patch {patch_size} is larger than the {cells} {noun}", option="patch"
        )
    if any(s > n for s, n in zip(stride_size, cells)):
        raise InvalidInputError(
            f"stride {stride_size} is larger than the {cells} {noun} (one position per axis "
            f"needs a stride of at most the {noun}'s size)",
            option="stride",
        )
    return Occlusion(patch_size, stride_size, colour(color, channels), score(score_))


def images(value: Any, shape: tuple[int, ...] | None = None, d: int | None = None) -> torch.Tensor:
    """A float tensor ``[C, *spatial]`` or ``[N, C, *spatial]`` of ``d`` spatial axes (those of
    ``shape``, a compiled ``(C, *spatial)``, when given; else 2) with finite values, as a batch
    ``[N, C, *spatial]``."""
    if not isinstance(value, torch.Tensor):
        raise InvalidInputError(f"image must be a torch.Tensor, got {type(value).__name__}")
    d = len(shape) - 1 if shape is not None else (2 if d is None else d)
    if value.dim() not in (d + 1, d + 2):
        single = {1: "[C, L]", 2: "[C, H, W]", 3: "[C, D, H, W]"}[d]
        raise InvalidInputError(
            f"image must have shape {single} or [N, {single[1:]}, got rank {value.dim()} "
            f"({list(value.shape)})"
        )
    if not value.is_floating_point():
        raise InvalidInputError(f"image must be a floating-point tensor, got {value.dtype}")
    if value.device.type == "meta":
        raise InvalidInputError("image is on the meta device: it has a shape but no values")
    batch = value if value.dim() == d + 2 else value.unsqueeze(0)
    if batch.shape[0] == 0:
        raise InvalidInputError("image batch is empty")
    if not bool(torch.isfinite(batch).all()):
        raise InvalidInputError("image contains NaN or infinite values")
    if shape is not None and tuple(batch.shape[1:]) != tuple(shape):
        raise InvalidInputError(
            f"image has shape {list(batch.shape[1:])} but the plan was compiled for {list(shape)}"
        )
    return batch


def targets(value: Any, count: int, classes: int, predicted: torch.Tensor) -> torch.Tensor:
    """Target classes ``[N, 1]``: the prediction, one class for all, or one per image."""
    if value is None:
        return predicted.reshape(count, 1)
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    values = [value] * count if _is_int(value) else value
    if (
        not isinstance(values, Sequence)
        or len(values) != count
        or not all(_is_int(v) for v in values)
    ):
        raise InvalidInputError(
            f"target must be an int or one int per image, got {value!r}", option="target"
        )
    if any(not 0 <= v < classes for v in values):
        raise InvalidInputError(
            f"target {value!r} is outside the model's {classes} classes", option="target"
        )
    return torch.tensor(values, dtype=torch.int64, device=predicted.device).reshape(count, 1)


def target_table(value: Any, count: int, classes: int, device: torch.device) -> torch.Tensor:
    """Several target classes per image: an int tensor ``[N, T]`` of valid classes."""
    table = torch.as_tensor(value, device=device)
    if table.dim() != 2 or table.shape[0] != count or table.dtype not in (torch.int32, torch.int64):
        raise InvalidInputError(f"targets must be an int tensor [{count}, T], got {value!r}")
    if table.numel() and (int(table.min()) < 0 or int(table.max()) >= classes):
        raise InvalidInputError(f"targets {value!r} fall outside the model's {classes} classes")
    return table.to(torch.int64)


def batch(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise InvalidInputError(
            f"batch_size must be a positive int or None, got {value!r}", option="batch_size"
        )
    return int(value)


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype(value: Any) -> torch.dtype | None:
    """``None`` (the model's own precision) or one of ``fp32``, ``bf16``, ``fp16``."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in PRECISIONS:
        raise InvalidInputError(
            f"precision must be one of {', '.join(PRECISIONS)} (or None), got {value!r}",
            option="precision",
        )
    return PRECISIONS[value]


def model(value: Any) -> torch.nn.Module:
    """The model: a ``torch.nn.Module`` (a function is wrapped in one's ``forward``)."""
    if not isinstance(value, torch.nn.Module):
        raise InvalidInputError(
            f"model must be a torch.nn.Module, got {type(value).__name__} (put a function in "
            "an nn.Module's forward)",
            option="model",
        )
    return value


def same_place(model: torch.nn.Module, images: torch.Tensor) -> None:
    """The images are on the model's device and in its parameters' dtype."""
    parameter = next(iter(model.parameters()), None)
    if parameter is not None and parameter.device != images.device:
        raise InvalidInputError(
            f"the image is on {images.device} but the model is on {parameter.device}"
        )
    if parameter is not None and parameter.dtype != images.dtype:
        raise InvalidInputError(
            f"the image is {images.dtype} but the model's parameters are {parameter.dtype}"
        )


def scored_classes(classes: int, score_: Score) -> None:
    """A probability needs several classes: a softmax over one score is always 1."""
    if classes == 1 and score_ is Score.PROB:
        raise InvalidInputError(
            "the model gives one score per image, whose softmax is always 1: explain it with "
            "score='logit' (its raw output)",
            option="score",
        )


def finite_scores(scores: torch.Tensor) -> None:
    """The model's outputs on the clean images are finite: a NaN there (NaN weights, an
    overflow in half precision) would make every cell of the heatmap NaN."""
    if not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).sum())
        raise InvalidInputError(
            f"the model's outputs on the clean image are not finite ({bad} of "
            f"{scores.numel()} values are NaN or infinite): check its weights, its inputs' "
            "range and its precision"
        )


def positions(value: Any, count: int, device: torch.device) -> torch.Tensor | None:
    """Grid indices ``[P]`` in ``[0, count)``: an int tensor, a sequence of ints or a range
    (``None``: every position). Negative indices are refused, not wrapped."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise InvalidInputError(f"positions must be integers, got a {value.dtype} tensor")
        chosen = value.reshape(-1)
    elif isinstance(value, Sequence | range) and all(_is_int(v) for v in value):
        chosen = torch.tensor(list(value), dtype=torch.int64)
    else:
        raise InvalidInputError(
            f"positions must be an int tensor or a sequence of ints, got {type(value).__name__}"
        )
    if chosen.numel() == 0:
        raise InvalidInputError("positions is empty")
    low, high = int(chosen.min()), int(chosen.max())
    if low < 0 or high >= count:
        wrong = low if low < 0 else high
        raise InvalidInputError(f"position {wrong} is outside the grid's 0…{count - 1}")
    return chosen.to(device=device, dtype=torch.int64)


def in_precision(model: Any, dtype: torch.dtype | None) -> Any:
    """The model, or a copy of it converted to ``dtype`` (the caller's model is left alone)."""
    import copy

    parameter = next(iter(model.parameters()), None)
    if dtype is None or parameter is None or parameter.dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype)


def fraction(name: str, value: Any, *, default: float | None = None) -> float | None:
    """A number in (0, 1] (``None`` gives ``default``)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < float(value) <= 1:
        raise InvalidInputError(f"{name} must be a number in (0, 1], got {value!r}", option=name)
    return float(value)


def speedup_target(value: Any) -> float | None:
    """A drill-down speedup target: a number greater than 1 (or None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not float(value) > 1:
        raise InvalidInputError(
            f"speedup must be a number greater than 1, got {value!r}", option="speedup"
        )
    return float(value)


def budget(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise InvalidInputError(
            f"memory_budget must be a positive number of bytes or None, got {value!r}",
            option="memory_budget",
        )
    return int(value)


def target_spec(value: Any) -> int | tuple[int, ...] | None:
    """``None`` (the predicted class), one class, or one class per image; the range is checked
    against the model's classes when the plan runs."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if value is None or _is_int(value):
        return value
    if isinstance(value, Sequence) and value and all(_is_int(v) for v in value):
        return tuple(int(v) for v in value)
    raise InvalidInputError(
        f"target must be an int or one int per image, got {value!r}", option="target"
    )


def drilldown_settings(
    drilldown: Any, speedup: Any, stride: Size, mode: Any = DrillDownMode.GRID
) -> DrillDown | None:
    """Validated drill-down settings, or None when neither option is given."""
    chosen = choice("drilldown_mode", mode, DrillDownMode)
    ratio = fraction("drilldown", drilldown, default=DEFAULT_RATIO)
    goal = speedup_target(speedup)
    if drilldown is None and speedup is None:
        return None
    if stride.d != 2:
        raise InvalidInputError(
            f"drill-down refines heatmaps of images; this input has {stride.d} spatial axes "
            "(tau approximates any rank)",
            option="drilldown" if drilldown is not None else "speedup",
        )
    if stride.h != stride.w:
        raise InvalidInputError("drill-down needs a square stride (one int)", option="stride")
    assert ratio is not None
    if goal is None and ratio * DEFAULT_TARGET >= 1:  # the default target, never asked for
        raise InvalidInputError(
            f"drilldown={ratio:g} re-runs {ratio:.0%} of the cells at the fine stride, so the "
            f"default speedup target {DEFAULT_TARGET:g}× is out of reach (a drill-down is less "
            f"than 1/{ratio:g} = {1 / ratio:.3g}× faster): use a smaller fraction (the paper's "
            f"{DEFAULT_RATIO:g}) or give a reachable speedup=",
            option="drilldown",
        )
    return DrillDown.plan(ratio, goal or DEFAULT_TARGET, stride.h, chosen)


def resolve_ssim(
    ssim: Any, profile: Any, workload: Occlusion, tau: Any, drilldown: Any, speedup: Any, mode: Any
) -> tuple[float | None, Any, Any, Any, Choice | None]:
    """``(tau, drilldown, speedup, drilldown_mode, choice)`` for an ``ssim`` target from a
    profile: the planner's choice (``quality.planner``) where the profile measured costs,
    else the smallest τ (and drill-down) that met the target (``choice`` None)."""
    wanted = fraction("ssim", ssim)
    if tau is not None:
        raise InvalidInputError("give either tau or ssim (which chooses τ), not both", option="tau")
    if not isinstance(profile, Profile):
        raise InvalidInputError(
            "ssim= needs a tuning profile: profile = kql.tune(model, sample_images, ssim=...), "
            "then pass profile=profile",
            option="ssim",
        )
    patch = workload.patch
    if not profile.fits(tuple(patch)):
        raise InvalidInputError(
            f"the profile was tuned at patch {profile.patch}, this workload uses patch {patch}",
            option="patch",
        )
    assert wanted is not None
    if profile.costs and drilldown is None and speedup is None:
        # A refinement's replay holds for the grid it was replayed on.
        choice = planner.choose(profile, wanted, profile.fits(tuple(workload.stride), "stride"))
        chosen = choice.chosen
        if chosen.speedup is not None:
            return (
                chosen.tau,
                profile.drilldown_ratio,
                chosen.speedup,
                profile.drilldown_mode,
                choice,
            )
        return chosen.tau, None, None, mode, choice
    chosen_tau = profile.tau_for(wanted)
    if drilldown is None and speedup is None and profile.drilldown_ratio is not None:
        found = profile.speedup_for(wanted)
        if found is not None:
            drilldown, speedup, mode = profile.drilldown_ratio, found, profile.drilldown_mode
    return chosen_tau, drilldown, speedup, mode, None


@dataclass(frozen=True, slots=True)
class Refine:
    """Coarse-to-fine refinement (``krypton_ql.plans.refine``): a lattice of one cell in
    ``period``, then denser lattices until exact scores at a ``check`` fraction of the cells
    estimate the heatmap's SSIM at ``target`` or more, ``step`` of the cells at a time where
    the checks missed most; ``focus``: a fraction of the cells
    where the first reconstruction drops most, computed with the lattice."""

    target: float
    period: float
    check: float = 0.03
    focus: float = 0.0
    step: float = 0.08  # cells added by one refinement, as a fraction of all


@dataclass(frozen=True, slots=True)
class Guard:
    """The per-image quality guard of an ``ssim`` target (``krypton_ql.plans.guarded``): exact
    scores at a ``sample`` fraction of the positions estimate each heatmap's SSIM; an image
    below ``target`` runs again at the next τ of ``ladder`` (ascending, ending at 1: exact)."""

    target: float
    ladder: tuple[float, ...]
    sample: float = 0.04


class PlanKeywords(TypedDict, total=False):
    """``Options.build``'s keywords after the shape and the patch, for signatures that pass them
    on (``**options: Unpack[PlanKeywords]``); ``Options.build`` documents them. A new option is
    a parameter there and a line here (a test checks that the two agree)."""

    stride: Any
    color: Any
    target: Any
    score: Any
    batch_size: Any
    memory_budget: Any
    linear_strategy: Any
    backend: Any
    conv: Any
    precision: Any
    tau: Any
    drilldown: Any
    speedup: Any
    ssim: Any
    profile: Any
    drilldown_mode: Any
    guard: Any
    spatial_dims: Any


@dataclass(frozen=True, slots=True)
class Options:
    """One occlusion workload's options, validated: build it with ``Options.build`` from the
    public keywords (``kql.compile``'s, documented there). Frozen and hashable, so a session
    keys its compiled plans by it."""

    shape: tuple[int, ...]  # (C, *spatial) of the images
    occlusion: Occlusion
    target: int | tuple[int, ...] | None = None
    batch_size: int | None = None  # None: from the memory budget
    memory_budget: int | None = None  # None: the device's default budget
    linear_strategy: LinearStrategy = LinearStrategy.AUTO
    backend: Backend = Backend.AUTO
    conv: ConvChoice = ConvChoice.MEASURE
    precision: torch.dtype | None = None  # None: the model's own dtype
    tau: float = 1.0  # 1 is exact
    drilldown: DrillDown | None = None  # None: one stage, every position
    guard: Guard | None = None  # an ssim target's per-image quality guard
    refine: Refine | None = None  # an ssim target's coarse-to-fine refinement
    choice: Choice | None = None  # what an ssim target chose, and the alternatives

    @classmethod
    def build(
        cls,
        input_shape: Any,
        *,
        patch: Any,
        stride: Any = 1,
        color: Any = 0.0,
        target: Any = None,
        score: Any = "prob",
        batch_size: Any = None,
        memory_budget: Any = None,
        linear_strategy: Any = "auto",
        backend: Any = "auto",
        conv: Any = "measure",
        precision: Any = None,
        tau: Any = None,
        drilldown: Any = None,
        speedup: Any = None,
        ssim: Any = None,
        profile: Any = None,
        drilldown_mode: Any = "grid",
        guard: Any = True,
        spatial_dims: Any = None,
    ) -> Options:
        """Validate the public keywords — the one place they are declared, with
        ``PlanKeywords`` (``kql.compile``, ``occlusion_heatmap``, ``naive_heatmap``, the query
        language, the Captum drop-in and dataset jobs all take them).

        ``input_shape`` ``(C, *spatial)`` of one, two or three spatial axes (a signal ``(C,
        L)``, an image ``(C, H, W)``, a volume or clip ``(C, D, H, W)``; a leading batch axis is
        ignored); ``patch``, ``stride``: an int or one int per spatial axis; ``spatial_dims``:
        how many spatial axes there are, where the shape alone does not say (an int patch
        reads a 3- or 4-axis shape as an image, or a batch of them; a patch given as a tuple
        says it too — see ``spatial_rank``); ``color``: a
        number or one per channel, in the model's input space (default 0); ``target``: the class
        explained (None: each image's prediction; several for one image); ``score``: ``"prob"``
        (softmax) or ``"logit"``. ``batch_size``, ``memory_budget``: queries per batch (None:
        from the budget, the device's by default). ``linear_strategy``: how linear layers take
        their update (``"auto"``: the cost model chooses recompute or delta).

        ``backend``: ``"auto"`` (Triton kernels on CUDA, the torch reference on the CPU),
        ``"torch"`` or ``"triton"`` (on CPU tensors: Triton's interpreter, slow — for tests).
        ``conv`` (Triton backend): run each convolution with the fused kernel (``"triton"``),
        gather + cuDNN (``"cudnn"``), or whichever is faster on the first batch
        (``"measure"``). ``precision``: ``None`` runs in the model's own dtype; ``"fp32"``,
        ``"bf16"`` or ``"fp16"`` run a converted copy of the model on images cast to it (fp32
        allows TF32 where torch does). Scores are always reported in fp32.

        Approximation (off unless asked; explain marks it ``≈``): ``tau`` in (0, 1]: cap every
        layer's update box at ``round(τ·W_O)`` per side, around the patch; cells outside keep
        their clean values (projective-field thresholding; 1 is exact). ``drilldown`` (a
        fraction r in (0, 1]) and/or ``speedup`` (a target > 1; defaults r = 0.25, target 3):
        run every position at a coarse stride, then ``stride`` only at a fraction r of the
        cells (``DrillDownPlan``). ``ssim`` in (0, 1) with ``profile`` (from ``kql.tune``): the
        smallest τ — and the drill-down, if the profile measured one — that met the target.
        ``drilldown_mode``: ``"grid"`` (the paper's coarse stride, bilinear interpolation) or
        ``"lattice"`` (the same query budget on a lattice of fine cells, thin-plate-spline
        reconstruction: much closer to exact; see ``compiler/drilldown.py``). ``guard`` (with
        ``ssim``; default on): check every heatmap against exact scores at a few random
        positions and run the images estimated below the target again at a larger τ, ending at
        exact (``krypton_ql.plans.guarded``; results carry ``ssim_estimate``)."""
        rank = len(input_shape) if isinstance(input_shape, Sized) else 0
        shape = image_shape(input_shape, spatial_rank(rank, patch, stride, spatial_dims))
        workload = occlusion(shape, patch, stride, color, score)
        checked = None
        if not isinstance(guard, bool):
            raise InvalidInputError(f"guard must be True or False, got {guard!r}", option="guard")
        refine, chose = None, None
        if ssim is not None:
            tau, drilldown, speedup, drilldown_mode, chose = resolve_ssim(
                ssim, profile, workload, tau, drilldown, speedup, drilldown_mode
            )
            if chose is not None and chose.chosen.period is not None:
                refine = Refine(float(ssim), chose.chosen.period, profile.check)
            approximate = (tau or 1.0) < 1.0 or drilldown is not None or speedup is not None
            if guard and approximate and refine is None:
                ladder = profile.ladder(tau or 1.0)
                if drilldown is not None or speedup is not None:
                    ladder = (1.0,)  # a drill-down is guarded by the exact plan alone
                checked = Guard(float(ssim), ladder)
            if not guard and refine is not None:
                raise InvalidInputError(
                    "guard=False: the chosen coarse-to-fine refinement is its guard (it adds "
                    "positions until the estimate meets the target); give tau= for an "
                    "unguarded approximation",
                    option="guard",
                )
        elif profile is not None:
            raise InvalidInputError("profile= is read by ssim=; give ssim too", option="profile")
        threshold = fraction("tau", tau, default=1.0)
        assert threshold is not None
        return cls(
            shape,
            workload,
            target_spec(target),
            batch(batch_size),
            budget(memory_budget),
            choice("linear_strategy", linear_strategy, LinearStrategy),
            choice("backend", backend, Backend),
            choice("conv", conv, ConvChoice),
            dtype(precision),
            threshold,
            drilldown_settings(drilldown, speedup, workload.stride, drilldown_mode),
            checked,
            refine,
            chose,
        )

    def at_starts(self, starts: Sequence[Sequence[int]]) -> Options:
        """The same workload with windows at every combination of ``starts`` (one increasing
        sequence per spatial axis, each window inside the input) instead of the stride's."""
        self._regular_grid_only()
        patch, spatial = self.occlusion.patch, self.shape[1:]
        axes = tuple(tuple(int(v) for v in axis) for axis in starts)
        if len(axes) != patch.d:
            raise InvalidInputError(f"starts must give {patch.d} axes, got {len(axes)}")
        for axis, (values, p, n) in enumerate(zip(axes, patch, spatial)):
            if not values or list(values) != sorted(set(values)) or values[0] < 0:
                raise InvalidInputError(f"starts along axis {axis} must increase from ≥ 0")
            if values[-1] + p > n:
                raise InvalidInputError(
                    f"a window at {values[-1]} of size {p} runs past axis {axis} ({n} cells)"
                )
        workload = dataclasses.replace(self.occlusion, starts=axes)
        return dataclasses.replace(self, occlusion=workload, drilldown=None, refine=None)

    def at_windows(self, starts: Sequence[Sequence[int]]) -> Options:
        """The same workload with one window per query at ``starts`` (one sequence per spatial
        axis, the queries' first cells; each window inside the input)."""
        self._regular_grid_only()
        patch, spatial = self.occlusion.patch, self.shape[1:]
        axes = tuple(tuple(int(v) for v in axis) for axis in starts)
        if len(axes) != patch.d or len({len(a) for a in axes}) != 1 or not axes[0]:
            raise InvalidInputError(
                f"windows need one first cell per query along each of {patch.d} axes"
            )
        for axis, (values, p, n) in enumerate(zip(axes, patch, spatial)):
            if min(values) < 0 or max(values) + p > n:
                raise InvalidInputError(
                    f"a window of size {p} at {min(values)}…{max(values)} leaves axis {axis} "
                    f"({n} cells)"
                )
        workload = dataclasses.replace(self.occlusion, windows=axes)
        return dataclasses.replace(self, occlusion=workload, drilldown=None, refine=None)

    def _regular_grid_only(self) -> None:
        if self.refine is not None:
            raise InvalidInputError(
                "the SSIM target chose a coarse-to-fine refinement, which runs on a stride's "
                "regular grid, not on windows placed one by one; give tau= instead",
                option="ssim",
            )

    def stage(self, stride: int) -> Options:
        """The same workload, one stage at ``stride`` (a drill-down's coarse stage)."""
        stride_size = Size.of(stride, self.occlusion.stride.d)
        workload = dataclasses.replace(self.occlusion, stride=stride_size)
        return dataclasses.replace(self, occlusion=workload, drilldown=None, refine=None)

    def compile_options(self, memory_budget: int) -> CompileOptions:
        """What the compiler reads; ``memory_budget`` is the device's, used when the options
        give none."""
        return CompileOptions(
            self.occlusion.patch,
            self.occlusion.stride,
            self.occlusion.color,
            self.linear_strategy,
            self.batch_size,
            self.memory_budget if self.memory_budget is not None else memory_budget,
            tau=self.tau,
        )
