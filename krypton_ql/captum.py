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

Accelerated: a 4-D image batch, an ``nn.Module`` forward function that ``torch.export`` can capture,
a window that spans all channels, a scalar or per-channel baseline, and a target per example
(an int, or one per example). Anything else is handed to Captum itself with a logged warning
when captum is installed, and raises ``UnsupportedOperationError`` (saying why) when it is
not. ``perturbations_per_eval`` is accepted and validated but batches are sized from memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from compiler.errors import InvalidInputError, KryptonError, UnsupportedOperationError
from krypton_ql.api import build_plan
from krypton_ql.options import Options

log = logging.getLogger(__name__)


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
        """Occlusion attributions of ``inputs`` ``[N, C, H, W]``: same shape, Captum's values."""
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
            raise InvalidInputError("perturbations_per_eval must be a positive int")
        reason = _unsupported(self.forward_func, inputs, sliding_window_shapes, target)
        reason = reason or ("additional_forward_args" if additional_forward_args else None)
        window = stride = colour = None
        if reason is None:
            window = (int(sliding_window_shapes[1]), int(sliding_window_shapes[2]))
            stride, reason = _strides(strides)
        if reason is None:
            colour, reason = _colour(baselines, inputs.shape[1])
        if reason is not None:
            return self._delegate(reason, arguments)
        try:
            options = Options.build(
                tuple(inputs.shape[1:]), patch=window, stride=stride, color=colour, score="logit"
            )
            plan = build_plan(self.forward_func, options)
        except UnsupportedOperationError as error:
            return self._delegate(str(error), arguments)
        self.last_plan, self.delegated = plan, None
        targets = _targets(target, len(inputs), inputs.device)
        result = plan.evaluate(inputs, targets=targets, progress=show_progress)
        diff = result.base[:, 0, None, None] - result.heatmaps[:, 0]  # [N, rows, cols]
        height, width = inputs.shape[2:]
        rows = _coverage(plan.positions.top[:: plan.grid[1]], window[0], height, diff)
        cols = _coverage(plan.positions.left[: plan.grid[1]], window[1], width, diff)
        total = torch.einsum("ry,nrc,cx->nyx", rows, diff, cols)
        count = rows.sum(0)[:, None] * cols.sum(0)[None, :]
        attributions = (total / count)[:, None].expand(-1, inputs.shape[1], -1, -1)
        return attributions.to(inputs.dtype).contiguous()

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


def _unsupported(forward: Any, inputs: Any, window: Any, target: Any) -> str | None:
    """Why the engine cannot take this call (None: it can)."""
    if not isinstance(forward, nn.Module):
        return "the forward function is not an nn.Module"
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        return "the input is not one [N, C, H, W] tensor"
    if not isinstance(window, Sequence) or len(window) != 3:
        return "sliding_window_shapes is not a (channels, height, width) tuple"
    if int(window[0]) != inputs.shape[1]:
        return "the window does not span every channel"
    if target is None:
        return "no target (the engine explains one output class)"
    if isinstance(target, Sequence) and any(isinstance(t, Sequence) for t in target):
        return "tuple targets"
    return None


def _strides(strides: Any) -> tuple[tuple[int, int] | None, str | None]:
    if strides is None:
        return (1, 1), None
    if isinstance(strides, int):
        return (strides, strides), None
    if isinstance(strides, Sequence) and len(strides) == 3:
        return (int(strides[1]), int(strides[2])), None
    return None, "strides is neither an int nor a (channels, height, width) tuple"


def _colour(baselines: Any, channels: int) -> tuple[Any, str | None]:
    """The fill colour: a number or one number per channel."""
    if baselines is None:
        return 0.0, None
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        return float(baselines), None
    if isinstance(baselines, Tensor):
        values = baselines.detach().float().cpu()
        if values.numel() == 1:
            return float(values), None
        per_channel = values.numel() == channels and values.squeeze().dim() == 1
        if per_channel and (values.dim() <= 1 or values.shape[-2:] == (1, 1)):
            return tuple(float(v) for v in values.flatten()), None
    return None, "the baseline is not a number or one number per channel"


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
        raise InvalidInputError(f"target has {len(values)} entries for {count} inputs")
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


__all__ = ["KryptonError", "Occlusion"]
