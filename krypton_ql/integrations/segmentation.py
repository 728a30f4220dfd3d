"""Occlusion for models whose output is a score map (segmentation): which part of the image made
the model label a region as a class.

A model's map output ``[N, K, H', W']`` (or the entry of a dict / tuple that holds one —
torchvision's segmentation models return ``{"out": …, "aux": …}``) becomes class scores
``[N, K]`` by ``RegionScores``: the map is resized to the input size as torchvision's heads do
(bilinear, ``align_corners=False``; a no-op for models that already return input-size maps),
then each class's score is the mean over its region of the per-pixel softmax probability
(``score="prob"``) or of the logit (``score="logit"``)::

    score[k] = (1 / |R_k|) Σ_{(y, x) ∈ R_k} p[k, y, x]
             = mean_{y, x}(p ⊙ w)[k],   w[k, y, x] = [(y, x) ∈ R_k] · H·W / |R_k|

— a per-position softmax (element-wise in space) and a region aggregate (the product with the
constant weights and the mean fold into one ``RegionSum``: ``fold_mask_into_region_sum``), each
of which the engine maintains incrementally: an occluded patch changes the map only in a bounded
box, and the region sum by its delta over that box,
``Σ_R f(V ⊕ Δ) = Σ_R f(V) + Σ_{box ∩ R} (f(new) − f(old))`` (``push_delta_through_region_sum``).
Captum's usual wrapper ``model(x)["out"][:, c].mul(mask).sum((1, 2))`` imports as the same
aggregate. A region is a boolean mask ``[H, W]`` or a box ``(y0, x0, y1, x1)`` in input
pixels (one for every class), or by default each class's own pixels in the clean image's
prediction, so that every class of the image is explained in one pass.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compiler.errors import InvalidInputError, UnsupportedOperationError
from compiler.importer import probe
from krypton_ql import fingerprint


class RegionScores(nn.Module):
    """Class scores ``[N, K]`` of a map-output model: each class's mean score over its region.

    ``weights`` ``[K, H, W]`` is ``[pixel in R_k] · H·W / |R_k|`` (0 for an empty region)."""

    weights: Tensor  # [1, K, H, W], a buffer

    def __init__(
        self, model: nn.Module, weights: Tensor, output: Any, score: str, size: tuple[int, int]
    ):
        super().__init__()
        self.model, self.output, self.score, self.size = model, output, score, size
        self.register_buffer("weights", weights[None].float())

    def forward(self, x: Tensor) -> Tensor:
        scores = select_map(self.model(x), self.output)
        if tuple(scores.shape[-2:]) != self.size:
            scores = F.interpolate(scores, size=self.size, mode="bilinear", align_corners=False)
        if self.score == "prob":
            scores = scores.softmax(1)
        return (scores * self.weights).mean((2, 3))


def select_map(output: Any, choice: Any = None) -> Tensor:
    """The score map among a model's outputs: ``choice`` names a dict entry or a tuple index;
    by default ``"out"`` or the only tensor."""
    if isinstance(output, Tensor):
        found = output
    elif isinstance(output, Mapping):
        key = choice if choice is not None else ("out" if "out" in output else None)
        if key is None:
            tensors = [k for k, v in output.items() if isinstance(v, Tensor)]
            if len(tensors) != 1:
                raise InvalidInputError(
                    f"the model returns a dict with entries {list(output)}: choose one with "
                    "output=", option="output",
                )  # fmt: skip
            key = tensors[0]
        if key not in output:
            raise InvalidInputError(
                f"output={key!r} is not among the model's outputs {list(output)}", option="output"
            )
        found = output[key]
    elif isinstance(output, Sequence):
        tensors = [i for i, v in enumerate(output) if isinstance(v, Tensor)]
        index = choice if choice is not None else (tensors[0] if len(tensors) == 1 else None)
        if not isinstance(index, int) or not 0 <= index < len(output):
            raise InvalidInputError(
                f"the model returns {len(output)} values: choose one with output=<index>",
                option="output",
            )
        found = output[index]
    else:
        raise UnsupportedOperationError(f"the model returns {type(output).__name__}")
    if not isinstance(found, Tensor) or found.dim() != 4:
        shape = list(found.shape) if isinstance(found, Tensor) else type(found).__name__
        raise UnsupportedOperationError(
            f"a region score needs a score map [N, classes, H, W] from the model, got {shape}"
        )
    return found


def returns_map(model: nn.Module, images: Tensor, output: Any = None) -> bool:
    """Whether the model's output (the chosen entry) is a score map rather than ``[N, K]``
    (False when the model cannot run on the images, or is training: the classification path
    then says why, and a training model's batch norms are left untouched)."""
    if any(module.training for module in model.modules()):
        return False
    parameter = next(iter(model.parameters()), None)
    if parameter is not None and (parameter.device, parameter.dtype) != (
        images.device,
        images.dtype,
    ):
        return False
    key = None
    if output is None or isinstance(output, str | int):  # kept per model version and shape
        key = (fingerprint.versions(model), tuple(images.shape[1:]), str(images.dtype),
               str(images.device), output)  # fmt: skip
        held = _PROBED.get(key)
        if held is not None and held[0]() is model:
            return held[1]
    try:
        with fingerprint.MODEL_LOCK:  # not while another thread exports the model
            result = probe(model, images[:1])  # leaves a model that writes its buffers as it was
    except Exception:  # the classification path reports the model's error cleanly
        return False
    answer = holds_map(result)
    if key is not None:
        _PROBED[key] = (weakref.ref(model), answer)
        while len(_PROBED) > 16:
            _PROBED.popitem(last=False)
    return answer


# returns_map's answers (one forward each) per model version, input shape and output entry.
_PROBED: OrderedDict[Any, tuple[weakref.ref, bool]] = OrderedDict()


def holds_map(result: Any) -> bool:
    """Whether a model's result is, or holds, a score map."""
    values = [result]
    if isinstance(result, Mapping | Sequence) and not isinstance(result, str | Tensor):
        values = list(result.values()) if isinstance(result, Mapping) else list(result)
    return any(_is_map(value) for value in values)


def _is_map(value: Any) -> bool:
    """A score map ``[N, K, H', W']`` with more than one cell (``[N, K, 1, 1]`` are class
    scores with two trailing axes, not a map)."""
    return isinstance(value, Tensor) and value.dim() == 4 and value.shape[2] * value.shape[3] > 1


@dataclass(frozen=True)
class RegionJob:
    """One class-score computation of a map-output model's region scores: ``model`` (a
    ``RegionScores``) on ``images`` ``[n, C, H, W]`` for ``target`` (as ``occlusion_heatmap``
    takes it; None: the wrapper's default), or — one image, several classes — for each of
    ``classes`` (the heatmaps ``[1, T, rows, cols]``)."""

    model: RegionScores
    images: Tensor
    target: Any = None
    classes: list[int] | None = None


def region_jobs(
    model: nn.Module, images: Tensor, *, region: Any, output: Any, target: Any, score: Any
) -> list[RegionJob]:
    """The computations that make ``[N, rows, cols]`` region-score heatmaps of a map-output
    model, in image order: one for all images with a given region, one per image with the
    default (predicted) regions; for one image and a list of classes, one with every class's
    own region (``RegionJob.classes``). The caller computes them (incrementally, or naively)."""
    if score not in ("prob", "logit"):
        raise InvalidInputError(f"score must be 'prob' or 'logit', got {score!r}", option="score")
    size = (images.shape[-2], images.shape[-1])
    count = len(images)
    classes = _classes(target) if count == 1 else None
    if classes is not None:  # one image, several classes: every class's own region at once
        weights = region_weights(model, images[0], region, output, size)
        check_target_region(weights, classes)
        wrapper = RegionScores(model, weights, output, score, size).eval()
        return [RegionJob(wrapper, images[:1], classes=classes)]
    targets = _per_image(target, count)
    if region is not None:
        weights = region_weights(model, images[0], region, output, size)
        check_target_region(weights, [t for t in targets if t is not None])
        wrapper = RegionScores(model, weights, output, score, size).eval()
        if all(t is None for t in targets):
            return [RegionJob(wrapper, images)]
        chosen = [t if t is not None else default_target(weights) for t in targets]
        return [RegionJob(wrapper, images, target=chosen)]
    jobs = []
    for index in range(count):
        weights = region_weights(model, images[index], None, output, size)
        given = targets[index]
        one = given if given is not None else default_target(weights)
        check_target_region(weights, [one])
        wrapper = RegionScores(model, weights, output, score, size).eval()
        jobs.append(RegionJob(wrapper, images[index : index + 1], target=one))
    return jobs


def _classes(target: Any) -> list[int] | None:
    """Several classes for one image (a list of ints, more than one), else None."""
    if isinstance(target, Tensor):
        target = target.tolist()
    if (
        isinstance(target, Sequence)
        and not isinstance(target, str)
        and len(target) > 1
        and all(isinstance(t, int) and not isinstance(t, bool) for t in target)
    ):
        return list(target)
    return None


def _per_image(target: Any, count: int) -> list[int | None]:
    if isinstance(target, Tensor):
        target = target.tolist()
    if target is None or (isinstance(target, int) and not isinstance(target, bool)):
        return [target] * count
    if (
        isinstance(target, Sequence)
        and len(target) == count
        and all(isinstance(t, int) and not isinstance(t, bool) for t in target)
    ):
        return list(target)
    raise InvalidInputError(
        f"target must be a class or one class per image, got {target!r}", option="target"
    )


def region_weights(
    model: nn.Module, image: Tensor, region: Any, output: Any, size: tuple[int, int]
) -> Tensor:
    """``[K, H, W]``: each class's region as mean weights — the ``region`` given (a mask or a
    box, the same for every class), else the class's pixels in the clean prediction."""
    with torch.no_grad():
        scores = select_map(model(image[None]), output)
    if tuple(scores.shape[-2:]) != size:
        scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    classes = scores.shape[1]
    if region is None:
        predicted = scores[0].argmax(0)
        masks = predicted[None] == torch.arange(classes, device=predicted.device)[:, None, None]
    else:
        masks = region_mask(region, size).to(scores.device)[None].expand(classes, -1, -1)
    counts = masks.flatten(1).sum(1).clamp(min=1)
    return masks.float() * (size[0] * size[1] / counts)[:, None, None].float()


def as_region(region: Any) -> Any:
    """A region as the engine takes it: a box ``(y0, x0, y1, x1)`` as a tuple of ints, or a
    boolean mask tensor — from a tensor or NumPy array (non-zero = in the region) or a mask
    image file (its non-zero pixels)."""
    import numpy as np

    if isinstance(region, str | Path):
        region = _mask_file(Path(region))
    if isinstance(region, np.ndarray):
        region = torch.from_numpy(np.ascontiguousarray(region))
    if isinstance(region, Tensor):
        if region.dim() != 2 or region.dtype != torch.bool:
            raise InvalidInputError(
                f"a region mask is a boolean [H, W], got {str(region.dtype).split('.')[-1]} "
                f"{list(region.shape)} (a soft mask: threshold it, e.g. mask > 0.5)",
                option="region",
            )
        return region.detach().cpu()
    if (
        isinstance(region, Sequence)
        and len(region) == 4
        and all(isinstance(v, int) and not isinstance(v, bool) for v in region)
    ):
        return tuple(region)
    raise InvalidInputError(
        "region must be a boolean mask [H, W], a mask image file or a box (y0, x0, y1, x1), "
        f"got {type(region).__name__}",
        option="region",
    )


def _mask_file(path: Path) -> Tensor:
    """A mask image's non-zero pixels (any channel)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("L") if picture.mode == "P" else picture)
    except FileNotFoundError:
        raise InvalidInputError(f"no such mask file: {path}", option="region") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidInputError(
            f"cannot read the mask {path}: {error}", option="region"
        ) from None  # fmt: skip
    if pixels.ndim == 3:
        pixels = (pixels != 0).any(axis=2)
    return torch.from_numpy(np.ascontiguousarray(pixels != 0))


def region_mask(region: Any, size: tuple[int, int]) -> Tensor:
    """A boolean ``[H, W]`` mask from a region ``as_region`` takes (a box is half-open)."""
    height, width = size
    region = as_region(region)
    if isinstance(region, Tensor):
        if tuple(region.shape) != size:
            raise InvalidInputError(
                f"region mask has shape {list(region.shape)}, the image is {height}×{width}",
                option="region",
            )
        mask = region
    else:
        y0, x0, y1, x1 = region
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise InvalidInputError(
                f"region box {region} is not inside the {height}×{width} image "
                "(y0, x0, y1, x1 with y0 < y1, x0 < x1)",
                option="region",
            )
        mask = torch.zeros(size, dtype=torch.bool)
        mask[y0:y1, x0:x1] = True
    if not bool(mask.any()):
        raise InvalidInputError("region is empty", option="region")
    return mask


def check_target_region(weights: Tensor, targets: Sequence[int]) -> None:
    """Every target class has pixels in its region."""
    for target in targets:
        if not 0 <= target < len(weights):
            raise InvalidInputError(
                f"target {target} is outside the model's {len(weights)} classes", option="target"
            )
        if not bool(weights[target].any()):
            raise InvalidInputError(
                f"the clean image has no pixels predicted as class {target}: give region= "
                "to explain it over a region of your choosing",
                option="region",
            )


def default_target(weights: Tensor) -> int:
    """The class with the largest region (the most predicted pixels)."""
    return int((weights > 0).flatten(1).sum(1).argmax())
