"""Segments to ablate: label images made with scikit-image (the segmentations LIME's image
explainer and Captum's tutorials use), from a user's label image, or from a segmentation
model's predicted instances.

Every function returns an ``int64`` tensor ``[H, W]`` of labels (one per segment) for one
picture, which ``kql.ablation_scores`` and the Captum ``FeatureAblation`` drop-in take as a
``feature_mask``. A picture is an ``H×W×3`` (or ``H×W``) array as scikit-image reads it, or a
model input ``[C, H, W]`` tensor (its channels are stretched to [0, 1] for segmenting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from compiler.errors import InvalidInputError

METHODS = ("slic", "felzenszwalb", "quickshift", "watershed")


def _picture(image: Any) -> np.ndarray:
    """``H×W×3`` floats in [0, 1] (or ``H×W``) for scikit-image."""
    if isinstance(image, Tensor):
        if image.dim() != 3:
            raise InvalidInputError(
                f"a model input to segment is [C, H, W], got {list(image.shape)}"
            )
        array = image.detach().float().cpu().numpy().transpose(1, 2, 0)
    else:
        array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise InvalidInputError(f"a picture to segment is H×W or H×W×C, got {array.shape}")
    array = array.astype(np.float64)
    low, high = array.min(), array.max()
    array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    if array.ndim == 3 and array.shape[2] not in (1, 3):
        array = array[..., :1]
    return array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array


def _labels(array: np.ndarray) -> Tensor:
    """Labels numbered 0, 1, … in order of first appearance (row-major)."""
    _, first, inverse = np.unique(array, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return torch.from_numpy(order[inverse].reshape(array.shape).astype(np.int64))


def segment(image: Any, method: str = "slic", **options: Any) -> Tensor:
    """Segments of ``image`` by a scikit-image method — ``"slic"`` (``n_segments=100``,
    ``compactness=10`` by default), ``"felzenszwalb"``, ``"quickshift"`` or ``"watershed"``
    (of the gradient, ``markers=100`` by default) — with that function's keyword arguments.

    >>> from krypton_ql import models
    >>> labels = segment(models.sample_photo("coffee"), "slic", n_segments=50)
    >>> labels.shape[0] > 0 and int(labels.max()) + 1 == len(labels.unique())
    True
    """
    from skimage import filters, segmentation

    picture = _picture(image)
    colour = picture.ndim == 3
    if method == "slic":
        defaults = {"n_segments": 100, "compactness": 10.0, "start_label": 0}
        labels = segmentation.slic(picture, channel_axis=-1 if colour else None,
                                   **{**defaults, **options})  # fmt: skip
    elif method == "felzenszwalb":
        labels = segmentation.felzenszwalb(picture, channel_axis=-1 if colour else None,
                                           **options)  # fmt: skip
    elif method == "quickshift":
        rgb = picture if colour else np.stack([picture] * 3, -1)
        labels = segmentation.quickshift(rgb, **options)
    elif method == "watershed":
        grey = picture.mean(-1) if colour else picture
        labels = segmentation.watershed(filters.sobel(grey), **{"markers": 100, **options})
    else:
        raise InvalidInputError(f"unknown segmentation {method!r} (methods: {', '.join(METHODS)})")
    return _labels(labels)


def from_labels(labels: Any) -> Tensor:
    """A user's label image (any integers, e.g. an atlas or a manual annotation) as labels."""
    array = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise InvalidInputError(f"a label image holds integers, got {array.dtype}")
    return torch.from_numpy(array.astype(np.int64))


def from_instances(masks: Sequence[Any] | Tensor, background: bool = True) -> Tensor:
    """Labels from instance masks (a segmentation model's predicted objects, boolean ``[K, H,
    W]``): instance ``k`` is label ``k + 1`` where it is the first mask that covers a pixel;
    the pixels no mask covers are label 0 (``background=True``: one more segment) or, with
    ``background=False``, label −1 (a segment too: ``ablation_scores`` scores every label)."""
    stack = torch.as_tensor(np.stack([np.asarray(m, dtype=bool) for m in masks])) if not (
        isinstance(masks, Tensor)) else masks.bool()  # fmt: skip
    if stack.dim() != 3 or len(stack) == 0:
        raise InvalidInputError("instance masks are a non-empty boolean stack [K, H, W]")
    first = stack.int().argmax(0)
    covered = stack.any(0)
    return torch.where(covered, first + 1, torch.tensor(0 if background else -1)).long()
