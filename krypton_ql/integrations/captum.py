"""A drop-in for ``captum.attr.Occlusion`` that computes the same attributions with the
incremental engine.

    from krypton_ql.captum import Occlusion          # instead of: from captum.attr import …
    attributions = Occlusion(model).attribute(
        images, sliding_window_shapes=(3, 16, 16), strides=(3, 4, 4), target=281
    )

Semantics are Captum's (research/peers.md §1.3): windows at ``i·s`` per dimension,
``ceil((D − w)/s) + 1`` of them, the last one clipped at the border; per window
``diff = F(x)[target] − F(x with the window set to the baseline)[target]`` on what the forward
function returns (usually logits); each pixel's attribution is the average ``diff`` over the
windows that cover it; the result has the input's shape (every channel holds the same values).

Accelerated: a 4-D image batch (or a tuple of one, with the window, strides and baselines in
tuples of one, as Captum takes them), an ``nn.Module`` in eval mode that ``torch.export`` can
capture, a window that spans all channels, a baseline that — broadcast to the input as Captum
broadcasts it — is constant inside each channel (a number, ``[C, 1, 1]``, per example
``[N, C, 1, 1]``: one plan per distinct colour), and a target per example — or none, for a
forward function that returns one score per example, such as the usual segmentation wrapper
``model(x)["out"][:, c].mul(mask).sum((1, 2))`` (its masked sum is a region aggregate the
engine maintains by its delta over each window's box). Anything else —
several inputs, a model in training mode or one the engine cannot import, a baseline that
varies inside a channel — is handed to Captum itself with a logged warning when captum is
installed, and raises ``UnsupportedOperationError`` (saying why) when it is not. Arguments
Captum rejects are rejected alike, with errors that are also ``AssertionError`` /
``IndexError`` where Captum's are (``CaptumAssertionError``, ``CaptumIndexError``); float64
inputs give float32 attributions, as Captum's do. ``perturbations_per_eval`` is accepted and
validated but batches are sized from memory; ``attribute_future`` raises
``NotImplementedError`` as Captum's does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from compiler.errors import InvalidInputError, KryptonError, UnsupportedOperationError
from krypton_ql.options import Options
from krypton_ql.plans.build import build_plan

log = logging.getLogger(__name__)


class CaptumAssertionError(InvalidInputError, AssertionError):
    """An argument ``captum.attr.Occlusion`` rejects with an ``AssertionError`` (so code that
    catches Captum's errors catches ours)."""


class CaptumIndexError(InvalidInputError, IndexError):
    """A target outside the model's outputs (Captum: an ``IndexError``)."""


class Occlusion:
    """``captum.attr.Occlusion`` with krypton-ql's incremental engine underneath."""

    def __init__(self, forward_func: Any):
        self.forward_func = forward_func
        self.last_plan: Any = None  # the plan of the last accelerated call (for explain())
        self.delegated: str | None = None  # why the last call went to Captum, if it did

    def attribute(
        self,
        inputs: Any,
        sliding_window_shapes: Any,
        strides: Any = None,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> Any:
        """Occlusion attributions of ``inputs`` ``[N, C, H, W]`` (or a tuple of one such
        tensor, with the window, strides and baselines each in a tuple of one, as Captum takes
        them): same shape, Captum's values and dtype."""
        arguments = dict(
            inputs=inputs,
            sliding_window_shapes=sliding_window_shapes,
            strides=strides,
            baselines=baselines,
            target=target,
            additional_forward_args=additional_forward_args,
            perturbations_per_eval=perturbations_per_eval,
            show_progress=show_progress,
        )
        if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
            raise CaptumAssertionError("perturbations_per_eval must be a positive int")
        single = _single(inputs, sliding_window_shapes, strides, baselines)
        if single is None:
            return self._delegate("several inputs (a tuple of tensors)", arguments)
        images, window_shape, stride_shape, baseline = single
        reason = _unsupported(self.forward_func, images, target)
        if reason is None:
            _verify(images, window_shape, stride_shape, target)
            if int(window_shape[0]) != images.shape[1]:
                reason = "the window does not span every channel"
        reason = reason or ("additional_forward_args" if additional_forward_args else None)
        colours = None
        if reason is None:
            colours, reason = _colours(baseline, images.shape)
        if reason is not None:
            return self._delegate(reason, arguments)
        assert colours is not None
        window = (int(window_shape[1]), int(window_shape[2]))
        stride = _stride_pair(stride_shape, window, (images.shape[2], images.shape[3]))
        targets = _targets(0 if target is None else target, len(images), images.device)
        attributions = torch.empty(images.shape, dtype=_result_dtype(images.dtype))
        attributions = attributions.to(images.device)
        for colour, chosen in colours:  # one plan per distinct baseline colour
            try:
                options = Options.build(
                    tuple(images.shape[1:]), patch=window, stride=stride, color=colour,
                    score="logit",
                )  # fmt: skip
                plan = build_plan(self.forward_func, options)
            except CaptumAssertionError:
                raise
            except KryptonError as error:  # a model the engine cannot take: Captum can
                return self._delegate(str(error), arguments)
            if target is None and plan.classes != 1:
                return self._delegate(
                    f"no target, and the model has {plan.classes} outputs per example "
                    "(the engine explains one)", arguments,
                )  # fmt: skip
            if int(targets.max()) >= plan.classes or int(targets.min()) < 0:
                raise CaptumIndexError(
                    f"target {targets.flatten().tolist()} is outside the model's "
                    f"{plan.classes} outputs"
                )
            self.last_plan, self.delegated = plan, None
            part = _attribute(plan, images[chosen], targets[chosen], window, show_progress)
            attributions[chosen] = part.to(attributions.dtype)
        return (attributions,) if isinstance(inputs, tuple) else attributions

    def attribute_future(self) -> None:
        """Not implemented, as in Captum's ``Occlusion``."""
        raise NotImplementedError("attribute_future is not implemented for Occlusion")

    def _delegate(self, reason: str, arguments: dict) -> Any:
        try:
            from captum.attr import Occlusion as CaptumOcclusion
        except ImportError:
            raise UnsupportedOperationError(
                f"krypton_ql.captum.Occlusion cannot accelerate this call ({reason}), and "
                "captum is not installed to run it"
            ) from None
        log.warning(
            "krypton_ql.captum.Occlusion cannot accelerate this call (%s); running "
            "captum.attr.Occlusion instead",
            reason,
        )
        self.last_plan, self.delegated = None, reason
        return CaptumOcclusion(self.forward_func).attribute(**arguments)


def _attribute(
    plan: Any, images: Tensor, targets: Tensor, window: tuple[int, int], progress: Any
) -> Tensor:
    """Captum's attributions from the plan's heatmaps: each pixel's mean ``diff`` over the
    windows that cover it."""
    result = plan.evaluate(images, targets=targets, progress=progress)
    diff = result.base[:, 0, None, None] - result.heatmaps[:, 0]  # [N, rows, cols]
    height, width = images.shape[2:]
    rows = _coverage(plan.positions.top[:: plan.grid[1]], window[0], height, diff)
    cols = _coverage(plan.positions.left[: plan.grid[1]], window[1], width, diff)
    total = torch.einsum("ry,nrc,cx->nyx", rows, diff, cols)
    count = rows.sum(0)[:, None] * cols.sum(0)[None, :]
    return (total / count)[:, None].expand(-1, images.shape[1], -1, -1)


def _result_dtype(dtype: torch.dtype) -> torch.dtype:
    """Captum returns float32 attributions for float64 inputs (its accumulators are fp32)."""
    return torch.float32 if dtype == torch.float64 else dtype


def _single(inputs: Any, window: Any, strides: Any, baselines: Any) -> tuple | None:
    """``(images, window, strides, baselines)`` of one input tensor, unwrapped from Captum's
    one-element tuples; None for several inputs."""
    if not isinstance(inputs, tuple):
        return inputs, window, strides, baselines
    if len(inputs) != 1:
        return None

    def unwrap(value: Any, nested: bool) -> Any:
        if isinstance(value, tuple) and len(value) == 1 and (not nested or _is_shape(value[0])):
            return value[0]
        return value

    return inputs[0], unwrap(window, True), unwrap(strides, True), unwrap(baselines, False)


def _is_shape(value: Any) -> bool:
    return isinstance(value, tuple | int)


def _unsupported(forward: Any, inputs: Any, target: Any) -> str | None:
    """Why the engine cannot take this call (None: it can)."""
    if not isinstance(forward, nn.Module):
        return "the forward function is not an nn.Module"
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        return "the input is not one [N, C, H, W] tensor"
    if any(module.training for module in forward.modules()):
        return "the model is in training mode"
    if isinstance(target, Sequence) and any(isinstance(t, Sequence) for t in target):
        return "tuple targets"
    return None


def _verify(images: Tensor, window: Any, strides: Any, target: Any) -> None:
    """The arguments Captum asserts on, asserted alike."""
    dims = images.dim() - 1
    if not isinstance(window, tuple) or len(window) != dims:
        raise CaptumAssertionError(
            f"Occlusion shape for input index 0 is {window} but should be a tuple with {dims} "
            "dimensions."
        )
    if any(int(w) > d for w, d in zip(window, images.shape[1:])):
        raise CaptumAssertionError(
            f"Sliding window dimensions {window} cannot exceed input dimensions"
            f"{tuple(images.shape[1:])}."
        )
    steps = (1,) * dims if strides is None else strides
    steps = (steps,) * dims if isinstance(steps, int) else steps
    if not isinstance(steps, tuple) or len(steps) != dims:
        raise CaptumAssertionError(f"Strides {strides} should be an int or a tuple of {dims}.")
    extents = images.shape[1:]
    # Captum's rule: a stride may exceed the window only along an axis the window spans whole
    # (there is one position along it, whatever the stride).
    if any(int(s) > int(w) != int(d) for s, w, d in zip(steps, window, extents)):
        raise CaptumAssertionError(
            f"Stride dimension {strides if strides is not None else 1} cannot be larger than "
            f"sliding window shape dimension {window}."
        )
    if isinstance(target, Tensor) and target.dim() > 1:
        raise CaptumAssertionError(f"Tensor target dimension {target.shape} is not valid.")
    if isinstance(target, list) and len(target) != len(images):
        raise CaptumAssertionError("Target list length does not match output!")


def _stride_pair(strides: Any, window: tuple[int, int], extent: tuple[int, int]) -> tuple[int, int]:
    """The spatial strides; 1 along an axis the window spans whole (one position either way).

    >>> _stride_pair((3, 40, 4), (32, 8), (32, 32)), _stride_pair(8, (16, 16), (32, 32))
    ((1, 4), (8, 8))
    """
    if strides is None:
        return 1, 1
    pair = (strides, strides) if isinstance(strides, int) else (int(strides[1]), int(strides[2]))
    return tuple(1 if w == e else s for s, w, e in zip(pair, window, extent))  # type: ignore[return-value]


def _colours(baselines: Any, shape: torch.Size) -> tuple[Any, str | None]:
    """``[(colour, images)]``: the fill colour (a number or one per channel) of each group of
    images, from a baseline broadcast to the input's shape as Captum broadcasts it; a reason
    instead when the baseline varies inside a channel (not an occlusion colour)."""
    every = torch.arange(shape[0])
    if baselines is None:
        return [(0.0, every)], None
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        return [(float(baselines), every)], None
    if not isinstance(baselines, Tensor) or baselines.dim() > 4:
        return None, "the baseline is not a number or a tensor"
    values = baselines.detach().float().cpu()
    try:
        torch.broadcast_shapes(values.shape, shape)
    except RuntimeError:
        return None, f"the baseline's shape {list(values.shape)} does not broadcast to the input"
    values = values.reshape((1,) * (4 - values.dim()) + tuple(values.shape))
    if not bool((values == values[:, :, :1, :1]).all()):
        return None, "the baseline varies inside a channel"
    per_image = values[:, :, 0, 0].expand(shape[0], shape[1])  # [N, C]
    groups = []
    for row in torch.unique(per_image, dim=0):
        chosen = (per_image == row).all(1).nonzero().flatten()
        colour = float(row[0]) if bool((row == row[0]).all()) else tuple(row.tolist())
        groups.append((colour, chosen))
    return groups, None


def _targets(target: Any, count: int, device: torch.device) -> Tensor:
    if isinstance(target, Tensor):
        values = target.flatten().tolist()
    elif isinstance(target, Sequence):
        values = list(target)
    else:
        values = [target]
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise CaptumAssertionError("Target list length does not match output!")
    try:
        return torch.tensor([[int(v)] for v in values], device=device)
    except (TypeError, ValueError):
        raise InvalidInputError(f"target must be ints, got {target!r}") from None


def _coverage(starts: Any, size: int, extent: int, like: Tensor) -> Tensor:
    """``[windows, extent]``: 1 where a window (clipped at the border) covers a cell."""
    starts = torch.as_tensor(starts, device=like.device)
    cells = torch.arange(extent, device=like.device)
    covered = (cells[None, :] >= starts[:, None]) & (cells[None, :] < starts[:, None] + size)
    return covered.to(like.dtype)


__all__ = ["CaptumAssertionError", "CaptumIndexError", "KryptonError", "Occlusion"]
