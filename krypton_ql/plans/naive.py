"""The baseline: batched full re-inference of every occluded image, with the user's model.

This never touches the compiler's plans, so it is an independent oracle for the incremental
engine (it only shares argument validation and the position grid's definition).
"""

from __future__ import annotations

from typing import Any, Unpack

import torch
from torch import Tensor, nn

from compiler.boxes import Positions
from compiler.errors import InvalidInputError, UnsupportedOperationError
from compiler.types import Score, Size
from krypton_ql import options as check
from krypton_ql.options import Options, PlanKeywords
from krypton_ql.plans.base import ProgressArg
from krypton_ql.progress import progress_callback
from runtime.fill import Fill
from runtime.memory import default_budget


def naive_class_heatmap(
    model: nn.Module,
    image: Tensor,
    *,
    patch: Any,
    progress: ProgressArg = "auto",
    fill: Fill | None = None,
    **options: Unpack[PlanKeywords],
) -> Tensor:
    """``[rows, cols]`` (``[N, rows, cols]`` for a batch) of a model with class scores, by
    full re-inference (``kql.naive_heatmap`` takes map-output models too). Of the options,
    those of the occlusion itself apply (stride, colour, target, score, batch size,
    precision); all are validated as the incremental plan validates them."""
    d = options.get("spatial_dims") or check.spatial_rank(image.dim(), patch, options.get("stride"))
    images = check.images(image, d=d)
    checked = Options.build(tuple(images.shape[1:]), patch=patch, **{**options, "spatial_dims": d})
    model = check.in_precision(check.model(model), checked.precision)
    images = images.to(checked.precision) if checked.precision is not None else images
    occlusion, cells = checked.occlusion, Size(*checked.shape[1:])
    if any(m.training for m in model.modules()):
        raise InvalidInputError("the model is in training mode; call model.eval() first")
    check.same_place(model, images)
    if fill is not None:
        check.fill(fill).check(checked.shape, tuple(occlusion.patch), len(images))
    positions = Positions.grid_of(cells, occlusion.patch, occlusion.stride)
    starts = [torch.as_tensor(a, device=images.device) for a in positions.starts]
    colour = torch.tensor(occlusion.color, dtype=images.dtype, device=images.device)
    with torch.no_grad():
        logits = _class_scores(_forward(model, images), len(images))
        check.scored_classes(logits.shape[1], occlusion.score)
        targets = check.targets(checked.target, len(images), logits.shape[1], logits.argmax(dim=1))
        size = checked.batch_size or _batch_size(model, images[:1])
        total = len(images) * len(positions)
        scores = torch.empty(total, dtype=torch.float32, device=images.device)
        with progress_callback(progress, total, "naive") as report:
            for start in range(0, total, size):
                index = torch.arange(start, min(start + size, total), device=images.device)
                image_index, position = index // len(positions), index % len(positions)
                corners = [a[position] for a in starts]
                batch = occlude(images[image_index], corners, occlusion.patch, colour,
                                fill, image_index, position)  # fmt: skip
                output = model(batch)
                # scores in fp32 whatever the model's precision; one score per image: one class
                output = output.float().reshape(len(batch), -1)
                values = torch.softmax(output, 1) if occlusion.score is Score.PROB else output
                scores[index] = values.gather(1, targets[image_index]).squeeze(1)
                if report is not None:
                    report(int(index[-1]) + 1, total)
    heatmaps = scores.reshape(len(images), *positions.grid)
    return heatmaps[0] if image.dim() == d + 1 else heatmaps


def _forward(model: nn.Module, images: Tensor) -> Any:
    """The model on the clean images; its failure is the input's fault."""
    try:
        return model(images)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidInputError(
            f"the model does not accept inputs of shape {list(images.shape[1:])}: {reason}"
        ) from error


def _class_scores(output: Any, count: int) -> Tensor:
    """The clean images' class scores ``[N, K]``, checked as the engine's importer checks the
    model (its output) and its plan checks the clean forward (finite)."""
    if not isinstance(output, Tensor):
        raise UnsupportedOperationError("the model must return one tensor of class scores")
    if output.dim() == 1 and output.shape[0] == count:
        output = output[:, None]  # one score per image: one class
    if output.dim() != 2 or output.shape[0] != count:
        raise UnsupportedOperationError(
            f"the model's output has shape {list(output.shape)} for {count} images; an "
            "occlusion heatmap needs class scores of shape [N, classes]"
        )
    check.finite_scores(output)
    return output


def occlude(
    images: Tensor,
    corners: list[Tensor],
    patch: Size,
    colour: Tensor,
    fill: Fill | None = None,
    image_index: Tensor | None = None,
    position: Tensor | None = None,
) -> Tensor:
    """Copies of ``images`` ``[B, C, *spatial]`` with each one's patch (clipped at the border)
    set to ``colour`` (or ``fill``'s content; ``image_index``: each copy's input, for a
    per-input baseline; ``position``: each copy's position, for a region fill): along each
    axis, the cells from ``corners[a]`` on, ``patch[a]``."""
    d = len(corners)
    mask = torch.ones(1, dtype=torch.bool, device=images.device)
    cells = []
    for a, (first, length) in enumerate(zip(corners, patch)):
        shape = [1] * (d + 1)
        shape[1 + a] = images.shape[2 + a]
        axis = torch.arange(images.shape[2 + a], device=images.device).reshape(shape)
        start = first.reshape(-1, *([1] * d))
        mask = mask & (axis >= start) & (axis < start + length)
        cells.append(axis)
    if fill is None:
        return torch.where(mask[:, None], colour.reshape(-1, *([1] * d)), images)
    which = image_index if image_index is not None else torch.arange(len(images))
    content = fill.cells(images, which, tuple(corners), cells, mask, position)
    return torch.where(mask[:, None], content, images)


def _batch_size(model: nn.Module, image: Tensor) -> int:
    """Images per forward from the memory budget and the activations of one image."""
    total = 0

    def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        model(image)
    finally:
        for handle in handles:
            handle.remove()
    per_image = max(total, image.numel() * image.element_size())
    return max(1, default_budget(image.device) // per_image)
