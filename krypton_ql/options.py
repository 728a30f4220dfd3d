"""Validation of user-facing arguments: every bad value becomes a clear ``InvalidInputError``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch

from compiler.errors import InvalidInputError
from compiler.types import Score, Size2


@dataclass(frozen=True, slots=True)
class Occlusion:
    """The validated occlusion parameters of one workload."""

    patch: Size2
    stride: Size2
    color: tuple[float, ...]
    score: Score


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def size_pair(name: str, value: Any) -> Size2:
    """An int or an ``(h, w)`` pair of positive ints."""
    if _is_int(value):
        pair = (value, value)
    elif isinstance(value, Sequence) and len(value) == 2 and all(_is_int(v) for v in value):
        pair = (value[0], value[1])
    else:
        raise InvalidInputError(
            f"{name} must be an int or a pair of ints, got {value!r}", option=name
        )
    if min(pair) < 1:
        raise InvalidInputError(f"{name} must be at least 1, got {value!r}", option=name)
    return Size2(int(pair[0]), int(pair[1]))


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
    return values


def score(value: Any) -> Score:
    try:
        return Score(value) if not isinstance(value, Score) else value
    except ValueError:
        raise InvalidInputError(
            f"score must be 'prob' or 'logit', got {value!r}", option="score"
        ) from None


def input_shape(value: Any) -> tuple[int, int, int]:
    """``(C, H, W)``, or ``(N, C, H, W)`` whose ``N`` is ignored."""
    if isinstance(value, torch.Size | tuple | list) and all(_is_int(v) for v in value):
        dims = tuple(int(v) for v in value)
        if len(dims) in (3, 4) and min(dims) >= 1:
            return dims[-3], dims[-2], dims[-1]
    raise InvalidInputError(f"input_shape must be (C, H, W) of positive ints, got {value!r}")


def occlusion(
    shape: tuple[int, int, int], patch: Any, stride: Any, color: Any, score_: Any
) -> Occlusion:
    """Validate the occlusion parameters against an image shape ``(C, H, W)``."""
    channels, height, width = shape
    patch_size, stride_size = size_pair("patch", patch), size_pair("stride", stride)
    if patch_size.h > height or patch_size.w > width:
        raise InvalidInputError(
            f"patch {patch_size} is larger than the {height}×{width} image", option="patch"
        )
    return Occlusion(patch_size, stride_size, colour(color, channels), score(score_))


def images(value: Any, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """A float tensor ``[C, H, W]`` or ``[N, C, H, W]`` with finite values, as ``[N, C, H, W]``."""
    if not isinstance(value, torch.Tensor):
        raise InvalidInputError(f"image must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() not in (3, 4):
        raise InvalidInputError(
            f"image must have shape [C, H, W] or [N, C, H, W], got rank {value.dim()} "
            f"({list(value.shape)})"
        )
    if not value.is_floating_point():
        raise InvalidInputError(f"image must be a floating-point tensor, got {value.dtype}")
    batch = value if value.dim() == 4 else value.unsqueeze(0)
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


def batch_size(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise InvalidInputError(
            f"batch_size must be a positive int or None, got {value!r}", option="batch_size"
        )
    return int(value)


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision(value: Any) -> torch.dtype | None:
    """``None`` (the model's own precision) or one of ``fp32``, ``bf16``, ``fp16``."""
    if value is None:
        return None
    if value not in PRECISIONS:
        raise InvalidInputError(
            f"precision must be one of {', '.join(PRECISIONS)} (or None), got {value!r}",
            option="precision",
        )
    return PRECISIONS[value]


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
