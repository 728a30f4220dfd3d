"""A drop-in for ``monai.visualize.OcclusionSensitivity`` (MONAI 1.6) that computes the same
maps with the incremental engine.

    from krypton_ql.monai import OcclusionSensitivity   # instead of: from monai.visualize …
    occ_map, most_probable = OcclusionSensitivity(model, mask_size=16)(volume)

Semantics are MONAI's, computed with MONAI's own utilities where it has them:

- windows of ``mask_size`` (per spatial axis) placed by MONAI's sliding-window scan
  (``_get_scan_interval``: interval ``int(mask·(1 − overlap))``, at least 1;
  ``dense_patch_slices``: the last window moved back to end at the border) over the input, or
  over ``b_box`` widened by half a mask on each side (and the mask shrunk to fit it);
- each window's content: a float ``mode`` fills it with that value, ``"mean_img"`` with the
  input's mean, ``"gaussian"`` multiplies it by ``1 − g`` (MONAI's ``gaussian_occlusion``:
  ``g`` a Gaussian over the window, 1 at its centre, scaled to [0, 1]); ``"mean_patch"`` —
  as MONAI 1.6 computes it, not as it documents it — *multiplies* the window by the mean of
  its own values (its predictor unpacks ``constant_occlusion``'s ``(mul, add)`` as
  ``(add, mul)``), and the drop-in warns each call that it does the same;
- each window's model output, activated (``activate=True``: sigmoid when the *input* has one
  channel, else softmax over the classes, as MONAI decides; a callable: applied), is spread
  over the window's voxels and blended with MONAI's ``compute_importance_map`` (Gaussian
  weights for ``"gaussian"``, constant otherwise): each voxel holds the weighted mean over the
  windows that cover it;
- returns ``(occlusion map [1, classes, *spatial], most probable class [1, 1, *spatial])``
  (cropped to ``b_box`` when given) as ``MetaTensor``s; the errors MONAI raises (a batch of
  more than one, a mask larger than the image, an unknown mode, an overlap outside [0, 1))
  are raised alike, as MONAI's exception types.

Keyword arguments of the call go to the model, as MONAI passes them. The incremental plan
scores every window in one batched pass, so ``n_batch`` (MONAI's windows per forward) is
accepted but batches are sized from memory; ``verbose`` shows a progress bar as MONAI's does.
One keyword beyond MONAI's: ``tau`` (default 1, exact) caps every layer's update box at
``round(τ·side)`` per axis (projective-field thresholding, as ``kql.compile``'s ``tau``): faster
and approximate; ``kql.tune`` measures what SSIM a τ keeps on sample volumes.
A callable ``mode`` (which MONAI 1.6's own predictor then rejects with a ``RuntimeError``),
or a model the engine cannot import, is handed to MONAI's own ``OcclusionSensitivity`` with a
logged warning (``delegated`` says why). Plans are kept between calls on the same model,
input shape and windows (recompiled when the model's weights change).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from compiler.errors import KryptonError, UnsupportedOperationError
from krypton_ql import fingerprint
from krypton_ql import options as check
from krypton_ql.options import Options
from krypton_ql.plans.base import HeatmapPlan
from krypton_ql.plans.build import build_plan
from runtime.fill import Fill

log = logging.getLogger(__name__)

MODES = ("gaussian", "mean_patch", "mean_img")
MEAN_PATCH_WARNING = (
    "mode='mean_patch' multiplies each occluded window by the mean of its own values (MONAI "
    "1.6's OcclusionSensitivity swaps add and mul for this mode, although it documents "
    "replacing the window by its mean); krypton_ql.monai computes the same numbers"
)


class OcclusionSensitivity:
    """``monai.visualize.OcclusionSensitivity`` with krypton-ql's incremental engine
    underneath (module docstring)."""

    def __init__(
        self,
        nn_module: nn.Module,
        mask_size: int | Sequence = 16,
        n_batch: int = 16,
        verbose: bool = True,
        mode: str | float | Callable = "gaussian",
        overlap: float = 0.6,
        activate: bool | Callable = True,
        *,
        tau: float = 1.0,
    ) -> None:
        if isinstance(mode, str) and mode not in MODES:
            raise NotImplementedError
        check.fraction("tau", tau)  # krypton-ql's own option: refused here, not at the call
        self.tau = float(tau)
        self.nn_module, self.mask_size, self.n_batch = nn_module, mask_size, n_batch
        self.verbose, self.mode, self.overlap, self.activate = verbose, mode, overlap, activate
        self.last_plan: Any = None  # the plan of the last accelerated call (for explain())
        self.delegated: str | None = None  # why the last call went to MONAI, if it did
        self._cached: tuple[tuple, HeatmapPlan] | None = None

    def __call__(
        self, x: Tensor, b_box: Sequence | None = None, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        """The occlusion map ``[1, classes, *spatial]`` of ``x`` ``[1, C, *spatial]`` and the
        most probable class at each voxel ``[1, 1, *spatial]``, both cropped to ``b_box``
        (``[min1, max1, min2, max2, …]``, -1 for a whole axis) when given."""
        from monai.data import MetaTensor
        from monai.networks.utils import eval_mode
        from monai.utils import ensure_tuple_rep

        if x.shape[0] > 1:
            raise ValueError("Expected batch size of 1.")
        d = x.ndim - 2
        mask = tuple(int(m) for m in ensure_tuple_rep(self.mask_size, d))
        spatial = tuple(int(n) for n in x.shape[2:])
        low, high, mask = _crop(spatial, b_box, mask)
        region = tuple(h - lo for lo, h in zip(low, high))
        if any(m > g for g, m in zip(region, mask)):
            raise ValueError(f"Image (spatial shape) {region} should be bigger than mask {mask}.")
        reason = self._reason()
        if reason is not None:
            return self._delegate(reason, x, b_box, kwargs)
        colour, fill = self._content(x, mask)
        model = _WithArguments(self.nn_module, kwargs) if kwargs else self.nn_module
        with eval_mode(self.nn_module):
            slices = _windows(region, mask, self.overlap, d)
            starts = tuple(tuple(sorted({s[a].start + low[a] for s in slices})) for a in range(d))
            key = (fingerprint.versions(self.nn_module), tuple(x.shape), x.dtype, x.device,
                   mask, starts, colour, self.tau)  # fmt: skip
            try:
                plan = self._plan(key, model, kwargs)
            except KryptonError as error:  # a model the engine cannot take: MONAI can
                return self._delegate(str(error), x, b_box, kwargs)
            self.last_plan, self.delegated = plan, None
            classes = torch.arange(plan.classes, device=x.device)[None]
            result = plan.evaluate(x, targets=classes, progress=bool(self.verbose), fill=fill)
        outputs = result.heatmaps[0].reshape(plan.classes, -1).T.to(x.dtype)  # [windows, K]
        blended = self._blend(self._activated(outputs, x), slices, region, mask, x)
        full = blended.new_zeros((1, blended.shape[1], *spatial))
        full[(slice(None), slice(None), *(slice(lo, h) for lo, h in zip(low, high)))] = blended
        if b_box is not None:
            first = [max(int(b), 0) for b in b_box[::2]]
            last = [int(b) if int(b) > 0 else n for b, n in zip(b_box[1::2], spatial)]
            full = full[(slice(None), slice(None), *(slice(f, e) for f, e in zip(first, last)))]
        occlusion_map = MetaTensor(full.contiguous())
        return occlusion_map, occlusion_map.argmax(dim=1, keepdim=True)

    def _plan(self, key: tuple, model: nn.Module, kwargs: dict) -> HeatmapPlan:
        """The plan of ``key`` (model version, input, mask, window starts, colour): the last
        call's when the same, so repeated calls on one model and shape compile once."""
        if not kwargs and self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        _, shape, _, _, mask, starts, colour, tau = key
        options = Options.build(
            shape[1:], patch=mask, color=colour, score="logit", spatial_dims=len(mask), tau=tau
        ).at_starts(starts)
        plan = build_plan(model, options)
        self._cached = None if kwargs else (key, plan)
        return plan

    def _reason(self) -> str | None:
        """Why the engine cannot take this call (None: it can)."""
        if callable(self.mode):
            return "a callable mode (a function of the whole input and the window)"
        if not isinstance(self.mode, float | str):
            return f"mode {self.mode!r} is not a float, a callable or one of {MODES}"
        if not isinstance(self.nn_module, nn.Module):
            return "the model is not an nn.Module"
        return None

    def _content(self, x: Tensor, mask: tuple[int, ...]) -> tuple[float, Fill | None]:
        """The plan's colour and, where the mode is not a colour, the windows' fill."""
        from monai.visualize.occlusion_sensitivity import OcclusionSensitivity as Monai

        if isinstance(self.mode, float):
            return self.mode, None
        if self.mode == "mean_img":  # a fill, not a colour: the plan does not depend on x
            return 0.0, Fill.window(mul=0.0, add=x.mean().item())
        if self.mode == "gaussian":
            mul, _ = Monai.gaussian_occlusion(x, mask)
            assert isinstance(mul, Tensor)
            return 0.0, Fill.window(mul=mul[0])
        warnings.warn(MEAN_PATCH_WARNING, UserWarning, stacklevel=3)
        return 0.0, Fill.scaled_by_mean()

    def _activated(self, outputs: Tensor, x: Tensor) -> Tensor:
        if callable(self.activate):
            return self.activate(outputs)
        if self.activate:
            return outputs.sigmoid() if x.shape[1] == 1 else outputs.softmax(1)
        return outputs

    def _blend(
        self,
        outputs: Tensor,
        slices: list[tuple[slice, ...]],
        region: tuple[int, ...],
        mask: tuple[int, ...],
        x: Tensor,
    ) -> Tensor:
        """MONAI's stitching: each window's outputs over its voxels, weighted by the
        importance map, divided by the summed weights."""
        from monai.data.utils import compute_importance_map

        weight = compute_importance_map(
            mask,
            mode="gaussian" if self.mode == "gaussian" else "constant",
            sigma_scale=0.125,
            device=x.device,
            dtype=x.dtype,
        )
        total = torch.zeros((1, outputs.shape[1], *region), dtype=x.dtype, device=x.device)
        count = torch.zeros((1, 1, *region), dtype=x.dtype, device=x.device)
        spread = (...,) + (None,) * len(region)
        for row, window in zip(outputs, slices):
            total[(slice(None), slice(None), *window)] += row[spread] * weight
            count[(slice(None), slice(None), *window)] += weight
        return total / count

    def _delegate(
        self, reason: str, x: Tensor, b_box: Sequence | None, kwargs: dict
    ) -> tuple[Tensor, Tensor]:
        try:
            from monai.visualize.occlusion_sensitivity import OcclusionSensitivity as Monai
        except ImportError:  # pragma: no cover - monai is this module's requirement
            raise UnsupportedOperationError(
                f"krypton_ql.monai cannot accelerate this call ({reason}), and monai is not "
                "installed to run it"
            ) from None
        log.warning(
            "krypton_ql.monai.OcclusionSensitivity cannot accelerate this call (%s); running "
            "monai.visualize.OcclusionSensitivity instead",
            reason,
        )
        self.last_plan, self.delegated = None, reason
        monai = Monai(self.nn_module, self.mask_size, self.n_batch, self.verbose, self.mode,
                      self.overlap, self.activate)  # fmt: skip
        return monai(x, b_box, **kwargs)


class _WithArguments(nn.Module):
    """The model called with the keyword arguments MONAI passes on."""

    def __init__(self, model: nn.Module, arguments: dict[str, Any]):
        super().__init__()
        self.model, self.arguments = model, arguments
        self.training = False  # the wrapper itself: the model runs in eval mode (eval_mode)

    def forward(self, x: Tensor) -> Any:
        return self.model(x, **self.arguments)


def _crop(
    spatial: tuple[int, ...], b_box: Sequence | None, mask: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """MONAI's ``crop_meshgrid``: the region scanned — ``b_box`` widened by ``(mask − 1)//2``
    on each side, inside the image, a negative maximum meaning the whole axis — and the mask
    shrunk to fit it."""
    if b_box is None:
        return (0,) * len(spatial), spatial, mask
    edge = [(m - 1) // 2 for m in mask]
    low = tuple(max(int(b) - e, 0) for b, e in zip(b_box[::2], edge))
    high = tuple(
        n if int(b) == -1 else min(int(b) + e, n) for b, e, n in zip(b_box[1::2], edge, spatial)
    )
    size = tuple(max(h - lo, 0) for lo, h in zip(low, high))
    return low, high, tuple(min(m, s) for m, s in zip(mask, size))


def _windows(
    region: tuple[int, ...], mask: tuple[int, ...], overlap: Any, d: int
) -> list[tuple[slice, ...]]:
    """MONAI's sliding-window placement over ``region`` (row-major, the last axis fastest)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval
    from monai.utils import ensure_tuple_rep

    overlaps = ensure_tuple_rep(overlap, d)
    for o in overlaps:
        if o < 0 or o >= 1:
            raise ValueError(f"overlap must be >= 0 and < 1, got {overlaps}.")
    interval = _get_scan_interval(region, mask, d, overlaps)
    return list(dense_patch_slices(region, mask, interval, return_slice=True))


__all__ = ["MEAN_PATCH_WARNING", "OcclusionSensitivity"]
