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

Accelerated: one input batch ``[N, C, *spatial]`` of one, two or three spatial axes — signals
``[N, C, T]``, images ``[N, C, H, W]``, volumes and clips ``[N, C, D, H, W]`` — (or a tuple of
one, with the window, strides and baselines in tuples of one, as Captum takes them), an
``nn.Module`` in eval mode that ``torch.export`` can capture, any window (one that spans part
of the channels slides along them too: one evaluation of the same plan per channel position),
any baseline Captum broadcasts to the input (a number, per channel, per pixel, per example:
the windows take the baseline's values, ``kql.Fill``), and a target per example — or none, for
a forward function that returns one score per example, such as the usual segmentation wrapper
``model(x)["out"][:, c].mul(mask).sum((1, 2))`` (its masked sum is a region aggregate the
engine maintains by its delta over each window's box). Anything else — several inputs, a
model in training mode or one the engine cannot import, additional forward arguments — is
handed to Captum itself with a logged warning. The drop-ins are subclasses of Captum's classes:
what Captum's wrappers ask of an attribution method (``NoiseTunnel``: ``multiplies_by_inputs``,
``has_convergence_delta()``, ``attribute.__wrapped__``) is there, and settings made on the
instance (``use_weights``) hold for the calls handed to Captum. Arguments Captum rejects are
rejected alike, with errors that are also ``AssertionError`` / ``IndexError`` where Captum's
are (``CaptumAssertionError``, ``CaptumIndexError``); float64 inputs give float32
attributions, as Captum's do. ``perturbations_per_eval`` is accepted and validated but
batches are sized from memory; ``attribute_future`` raises ``NotImplementedError`` as
Captum's does.
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import torch
from captum.attr import FeatureAblation as CaptumFeatureAblation
from captum.attr import Occlusion as CaptumOcclusion
from torch import Tensor, nn

from compiler.errors import InvalidInputError, KryptonError
from krypton_ql import fingerprint
from krypton_ql.options import Options
from krypton_ql.plans.cache import PLANS
from krypton_ql.plans.regions import ablate
from krypton_ql.plans.tuning import with_shipped_profile
from runtime.fill import Fill

log = logging.getLogger(__name__)


class CaptumAssertionError(InvalidInputError, AssertionError):
    """An argument ``captum.attr.Occlusion`` rejects with an ``AssertionError`` (so code that
    catches Captum's errors catches ours)."""


class CaptumIndexError(InvalidInputError, IndexError):
    """A target outside the model's outputs (Captum: an ``IndexError``)."""


class CaptumRuntimeError(InvalidInputError, RuntimeError):
    """A feature mask or baseline that does not broadcast to the input (Captum: torch's
    ``RuntimeError``)."""


def _unwrappable(method: Any) -> Any:
    """Captum wraps its attribution methods (its usage log), and ``NoiseTunnel`` calls the
    unwrapped one (``attribute.__wrapped__``): ours are wrapped alike."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs)

    return wrapper


class Occlusion(CaptumOcclusion):
    """``captum.attr.Occlusion`` with krypton-ql's incremental engine underneath (a subclass
    of Captum's: what Captum's wrappers such as ``NoiseTunnel`` ask of it is Captum's)."""

    def __init__(self, forward_func: Any, *, ssim: float | None = None, profile: Any = None):
        """``ssim`` (off by default: Captum's exact attributions): an explicit approximation —
        the accelerated calls run the cheapest plan predicted to keep each heatmap's SSIM
        against exact at ``ssim`` or more (``krypton_ql.quality.planner``), from ``profile``
        (``kql.tune(model, …, score="logit")``: the attributions are logit differences) or,
        for the built-in model at patch 16, stride 4, its shipped profile. Calls handed to
        Captum stay exact."""
        super().__init__(forward_func)
        self.last_plan: Any = None  # the plan of the last accelerated call (for explain())
        self.delegated: str | None = None  # why the last call went to Captum, if it did
        if ssim is None and profile is not None:
            raise InvalidInputError("profile= is read by ssim=; give ssim too", option="profile")
        self.approximation = {} if ssim is None else {"ssim": ssim, "profile": profile}

    @_unwrappable
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
            reason = _baseline_reason(baseline, images.shape)
        reason = reason or ("additional_forward_args" if additional_forward_args else None)
        if reason is not None:
            return self._delegate(reason, arguments)
        window = tuple(int(w) for w in window_shape)
        steps = _strides(stride_shape, window, tuple(images.shape[1:]))
        targets = _targets(0 if target is None else target, len(images), images.device)
        with ExitStack() as held:
            try:
                keywords = with_shipped_profile(
                    self.forward_func, images.shape[1:],
                    {"patch": window[1:], "stride": steps[1:], **self.approximation},
                )  # fmt: skip
                options = Options.build(
                    tuple(images.shape[1:]), **keywords,
                    color=0.0 if baseline is None else _number(baseline, 0.0), score="logit",
                    spatial_dims=images.dim() - 2,
                )  # fmt: skip
                plan = held.enter_context(PLANS.borrow(self.forward_func, options))
            except CaptumAssertionError:
                raise
            except KryptonError as error:  # a model the engine cannot take: Captum can
                return self._delegate(str(error), arguments)
            return self._accelerated(plan, images, targets, target, window, steps, baseline,
                                     show_progress, inputs, arguments)  # fmt: skip

    def _accelerated(
        self, plan: Any, images: Tensor, targets: Tensor, target: Any, window: tuple[int, ...],
        steps: tuple[int, ...], baseline: Any, show_progress: bool, inputs: Any, arguments: dict,
    ) -> Any:  # fmt: skip
        """The attributions by ``plan`` (the checks that need its class count first)."""
        if target is None and plan.classes != 1:
            return self._delegate(
                f"no target, and the model has {plan.classes} outputs per example "
                "(the engine explains one)", arguments,
            )  # fmt: skip
        if int(targets.max()) >= plan.classes or int(targets.min()) < 0:
            raise CaptumIndexError(
                f"target {targets.flatten().tolist()} is outside the model's {plan.classes} outputs"
            )
        self.last_plan, self.delegated = plan, None
        attributions = _attribute(plan, images, targets, window, steps[0], baseline, show_progress)
        attributions = attributions.to(_result_dtype(images.dtype))
        return (attributions,) if isinstance(inputs, tuple) else attributions

    def _delegate(self, reason: str, arguments: dict) -> Any:
        log.warning(
            "krypton_ql.captum.Occlusion cannot accelerate this call (%s); running "
            "captum.attr.Occlusion instead",
            reason,
        )
        self.last_plan, self.delegated = None, reason
        return super().attribute(**arguments)  # Captum's, with this instance's settings


class FeatureAblation(CaptumFeatureAblation):
    """``captum.attr.FeatureAblation`` with krypton-ql's incremental engine underneath: each
    feature of ``feature_mask`` (a region of any shape) is one query whose update is the
    feature's cells inside its bounding box; queries run in plans grouped by box size
    (``krypton_ql.plans.regions``, ``compiler.regions``).

    Captum's semantics: the features are the mask's distinct ids; feature ``j`` is ablated —
    its elements set to the baseline — in every example at once, and each element of feature
    ``j`` gets ``F(x)[t] − F(x with j ablated)[t]`` on what the model returns; the mask and the
    baselines broadcast to the input as Captum broadcasts them (a mask per example, per
    channel; ``feature_mask=None``: every element its own feature).

    Accelerated: one input tensor ``[N, C, *spatial]`` (1 to 3 spatial axes, or a tuple of
    one), an ``nn.Module`` in eval mode that the engine imports, an integer mask (or floats
    holding integers), a number or tensor baseline, a target per example (or none for one
    output per example), and at least one feature smaller than the whole input. Anything else
    — several inputs, ``additional_forward_args``, extra keyword arguments, every feature
    spanning the whole input — and ``attribute_future`` run on Captum's own class with a
    logged reason (``delegated``). Arguments Captum rejects are rejected alike and as its
    exception types. ``perturbations_per_eval`` is validated; batches are sized from memory.
    ``last_result`` holds the last accelerated call's ``AblationResult`` (its buckets say
    which plans ran).
    """

    def __init__(self, forward_func: Any):
        super().__init__(forward_func)
        self.last_result: Any = None
        self.delegated: str | None = None

    @_unwrappable
    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Captum's ``FeatureAblation.attribute``: attributions of the input's shape."""
        arguments = dict(
            inputs=inputs, baselines=baselines, target=target,
            additional_forward_args=additional_forward_args, feature_mask=feature_mask,
            perturbations_per_eval=perturbations_per_eval, show_progress=show_progress,
            **kwargs,
        )  # fmt: skip
        single = _single_ablation(inputs, baselines, feature_mask)
        if single is None:
            return self._delegate("several inputs (a tuple of tensors)", arguments)
        images, baseline, mask = single
        reason = _unsupported(self.forward_func, images, target)
        reason = reason or ("additional_forward_args" if additional_forward_args is not None
                            else None)  # fmt: skip
        reason = reason or (f"keyword arguments {sorted(kwargs)}" if kwargs else None)
        reason = reason or _baseline_reason(baseline, images.shape)
        reason = reason or _mask_reason(mask)
        if reason is not None:
            if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
                raise CaptumAssertionError(
                    "Perturbations per evaluation must be an integer and at least 1."
                )
            return self._delegate(reason, arguments)
        labels = _feature_labels(mask, images)
        if baseline is not None and _number(baseline, None) is None:
            _broadcast_or_raise(baseline, images, "baseline")
        if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
            raise CaptumAssertionError(
                "Perturbations per evaluation must be an integer and at least 1."
            )
        if isinstance(target, list) and len(target) != len(images):
            raise CaptumAssertionError("Target list length does not match output!")
        targets = _targets(0 if target is None else target, len(images), images.device)
        if _all_global(labels, images):
            return self._delegate(
                "no feature is spatially local (every feature spans the whole input)", arguments
            )
        outputs = _model_outputs(self.forward_func, images)
        if outputs is None:
            return self._delegate("the model does not return one tensor of scores", arguments)
        if target is None and outputs != 1:
            return self._delegate(
                f"no target, and the model has {outputs} outputs per example (the engine "
                "explains one)", arguments,
            )  # fmt: skip
        if int(targets.max()) >= outputs or int(targets.min()) < 0:
            raise CaptumIndexError(
                f"target {targets.flatten().tolist()} is outside the model's {outputs} outputs"
            )
        colour, fill = 0.0, None
        if baseline is not None and _number(baseline, None) is None:
            fill = Fill.per_pixel(torch.as_tensor(baseline, dtype=images.dtype))
        elif baseline is not None:
            colour = float(_number(baseline, 0.0))
        try:
            with _captum_progress(show_progress, "Feature Ablation attribution") as report:
                result = ablate(
                    self.forward_func, images, labels, fill=fill, color=colour,
                    target=None if target is None else tuple(targets.flatten().tolist()),
                    score="logit",
                    progress=report if report is not None else False,
                )  # fmt: skip
        except CaptumAssertionError:
            raise
        except KryptonError as error:  # a model the engine cannot take: Captum can
            return self._delegate(str(error), arguments)
        self.last_result, self.delegated = result, None
        drops = torch.nan_to_num(result.drops, nan=0.0)
        attributions = result.maps(drops)[:, 0].expand(images.shape)
        dtype = _output_dtype(self.forward_func, images.dtype)
        attributions = attributions.to(images.device, dtype).contiguous()
        return (attributions,) if isinstance(inputs, tuple) else attributions

    def attribute_future(self, *args: Any, **kwargs: Any) -> Any:
        """Captum's own ``attribute_future`` (a forward function that returns futures)."""
        self.last_result, self.delegated = None, "attribute_future"
        log.warning(
            "krypton_ql.captum.FeatureAblation cannot accelerate attribute_future; running "
            "captum.attr.FeatureAblation instead"
        )
        return super().attribute_future(*args, **kwargs)

    def _delegate(self, reason: str, arguments: dict) -> Any:
        log.warning(
            "krypton_ql.captum.FeatureAblation cannot accelerate this call (%s); running "
            "captum.attr.FeatureAblation instead",
            reason,
        )
        self.last_result, self.delegated = None, reason
        return super().attribute(**arguments)  # Captum's, with this instance's settings


@contextmanager
def _captum_progress(show: bool, label: str) -> Iterator[Any]:
    """A callback that drives one bar labelled as Captum labels its own (``label: 100%`` once,
    at the end), or None without ``show_progress``."""
    if not show:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc=label, total=1)

    def report(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield report
    finally:
        bar.close()


def _single_ablation(inputs: Any, baselines: Any, mask: Any) -> tuple | None:
    """``(images, baseline, mask)`` of one input tensor, unwrapped from Captum's one-element
    tuples; None for several inputs."""
    if not isinstance(inputs, tuple):
        return inputs, baselines, mask
    if len(inputs) != 1:
        return None

    def unwrap(value: Any) -> Any:
        return value[0] if isinstance(value, tuple) and len(value) == 1 else value

    return inputs[0], unwrap(baselines), unwrap(mask)


def _mask_reason(mask: Any) -> str | None:
    """Why a feature mask cannot be regions (None: it can)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        return f"the feature mask is a {type(mask).__name__}, not a tensor"
    if mask.dtype.is_complex:
        return "a complex feature mask"
    if mask.dtype.is_floating_point and not bool((mask == mask.round()).all()):
        return "the feature mask holds ids that are not integers"
    return None


def _feature_labels(mask: Tensor | None, images: Tensor) -> Tensor:
    """The feature ids as integer labels ``[N or 1, C or 1, *spatial]`` (Captum's default
    without a mask: every element of an example its own feature); a mask that does not
    broadcast to the input raises what Captum's ablation raises."""
    if mask is None:
        return torch.arange(images[0].numel(), device=images.device).reshape(images[:1].shape)
    labels = mask.to(images.device)
    labels = (
        labels.long() if labels.dtype.is_floating_point or labels.dtype == torch.bool else labels
    )
    _broadcast_or_raise(labels, images, "feature mask")
    return labels.reshape((1,) * (images.dim() - labels.dim()) + tuple(labels.shape))


def _broadcast_or_raise(value: Any, images: Tensor, name: str) -> None:
    shape = tuple(torch.as_tensor(value).shape)
    try:
        np.broadcast_shapes(shape, tuple(images.shape))
        if len(shape) > images.dim():
            raise ValueError
    except ValueError:
        raise CaptumRuntimeError(
            f"the {name} of shape {list(shape)} does not broadcast to the input "
            f"{list(images.shape)}"
        ) from None


def _all_global(labels: Tensor, images: Tensor) -> bool:
    """Whether every feature's bounding box is the whole input."""
    from compiler.regions import regions_of

    spatial = tuple(images.shape[2:])
    if all(n == 1 for n in spatial):
        return False  # one cell: a feature is as local as it can be
    for group in labels:
        regions = regions_of(group.cpu().numpy(), len(spatial))
        if any(bool((size < n).any()) for size, n in zip(regions.sizes, spatial)):
            return False
    return True


def _model_outputs(model: Any, images: Tensor) -> int | None:
    """Outputs per example of the model (one forward of the first example, kept per model
    version and input shape for an ``nn.Module``); None when it does not return one tensor
    with a batch axis."""
    key = None
    if isinstance(model, nn.Module):
        key = (fingerprint.versions(model), tuple(images.shape[1:]), str(images.dtype),
               str(images.device))  # fmt: skip
        held = _OUTPUTS.get(key)
        if held is not None and held[0]() is model:
            return held[1]
    with torch.no_grad():
        output = model(images[:1])
    count = None
    if isinstance(output, Tensor) and output.dim() > 0 and len(output) == 1:
        count = int(output[0].numel())
    if key is not None:
        _OUTPUTS[key] = (weakref.ref(model), count)
        while len(_OUTPUTS) > 16:
            _OUTPUTS.popitem(last=False)
    return count


_OUTPUTS: OrderedDict[Any, tuple[weakref.ref, int | None]] = OrderedDict()


def _output_dtype(model: Any, dtype: torch.dtype) -> torch.dtype:
    """The dtype of Captum's attributions: the model's output's (its parameters')."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return dtype


def _attribute(
    plan: Any,
    images: Tensor,
    targets: Tensor,
    window: tuple[int, ...],
    channel_stride: int,
    baseline: Any,
    progress: Any,
) -> Tensor:
    """Captum's attributions from the plan's heatmaps: each cell's mean ``diff`` over the
    windows that cover it. A window over part of the channels runs the plan once per channel
    position, its fill keeping the other channels."""
    channels, spatial = images.shape[1], tuple(images.shape[2:])
    starts = captum_starts(channels, window[0], channel_stride)
    coverage = [
        _coverage(np.unique(axis), size, extent, images)
        for axis, size, extent in zip(plan.positions.starts, window[1:], spatial)
    ]
    total = torch.zeros(images.shape, dtype=torch.float64, device=images.device)
    per_channel = torch.zeros(channels, dtype=torch.float64, device=images.device)
    for first in starts:
        inside = torch.zeros(channels, dtype=torch.bool, device=images.device)
        inside[first : first + window[0]] = True
        fill = _fill(baseline, inside, images)
        result = plan.evaluate(images, targets=targets, progress=progress, fill=fill)
        diff = (result.base[:, 0, *([None] * len(spatial))] - result.heatmaps[:, 0]).double()
        spread = diff  # [N, *grid] → [N, *spatial]: each window's diff over the cells it covers
        for axis, cover in enumerate(coverage):
            spread = torch.tensordot(spread, cover.double(), dims=([1 + axis], [0])).movedim(
                -1, 1 + axis
            )
        total[:, inside] += spread[:, None]
        per_channel[inside] += 1
    count = per_channel.reshape(-1, *([1] * len(spatial)))
    for axis, cover in enumerate(coverage):
        shape = [1] * len(spatial)
        shape[axis] = spatial[axis]
        count = count * cover.sum(0).double().reshape(shape)
    return total / count


def captum_starts(extent: int, window: int, stride: int) -> list[int]:
    """Captum's window starts along one axis: ``i·s`` for ``i = 0 … ceil((D − w)/s)``.

    >>> captum_starts(3, 1, 1), captum_starts(3, 3, 3), captum_starts(5, 2, 2)
    ([0, 1, 2], [0], [0, 2, 4])
    """
    return [i * stride for i in range(math.ceil((extent - window) / stride) + 1)]


def _fill(baseline: Any, inside: Tensor, images: Tensor) -> Fill | None:
    """The windows' content: the baseline (broadcast to the input, as Captum broadcasts it) in
    the channels ``inside`` the window, the clean values in the others; None where the plan's
    colour already is it (a number over every channel)."""
    if bool(inside.all()) and (baseline is None or _number(baseline, None) is not None):
        return None
    d = images.dim() - 2
    values = torch.zeros((), dtype=images.dtype) if baseline is None else baseline
    values = torch.as_tensor(values, dtype=images.dtype).to(images.device)
    values = values.reshape((1,) * (d + 2 - values.dim()) + tuple(values.shape))
    mask = inside.to(images.dtype).reshape(1, -1, *([1] * d))
    keep = (~inside).to(images.dtype).reshape(-1, *([1] * d))
    return Fill(mul=keep, baseline=values * mask)


def _number(baseline: Any, default: Any) -> Any:
    """A baseline that is one number (a Python number or a one-element tensor), else
    ``default``."""
    if isinstance(baseline, int | float) and not isinstance(baseline, bool):
        return float(baseline)
    if isinstance(baseline, Tensor) and baseline.numel() == 1:
        return float(baseline)
    return default


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
    if not isinstance(inputs, Tensor) or not 3 <= inputs.dim() <= 5:
        return "the input is not one [N, C, *spatial] tensor of 1, 2 or 3 spatial axes"
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


def _strides(strides: Any, window: tuple[int, ...], extent: tuple[int, ...]) -> tuple[int, ...]:
    """The strides along the channel and spatial axes; 1 along an axis the window spans whole
    (one position either way).

    >>> _strides((3, 40, 4), (3, 32, 8), (3, 32, 32)), _strides(8, (1, 16, 16), (3, 32, 32))
    ((1, 1, 4), (8, 8, 8))
    """
    steps = (1,) * len(window) if strides is None else strides
    steps = (steps,) * len(window) if isinstance(steps, int) else tuple(int(s) for s in steps)
    return tuple(1 if w == e else s for s, w, e in zip(steps, window, extent))


def _baseline_reason(baselines: Any, shape: torch.Size) -> str | None:
    """Why a baseline cannot be a fill (None: it can): Captum broadcasts a number or a tensor
    to the input."""
    if baselines is None or _number(baselines, None) is not None:
        return None
    if not isinstance(baselines, Tensor) or baselines.dim() > len(shape):
        return "the baseline is not a number or a tensor"
    try:
        torch.broadcast_shapes(tuple(baselines.shape), tuple(shape))
    except RuntimeError:
        return f"the baseline's shape {list(baselines.shape)} does not broadcast to the input"
    return None


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


__all__ = [
    "CaptumAssertionError", "CaptumIndexError", "CaptumRuntimeError", "FeatureAblation",
    "KryptonError", "Occlusion",
]  # fmt: skip
