"""How close an approximate heatmap is to the exact one: SSIM, Spearman rank correlation and
the overlap of the most important regions. Every function takes two ``[rows, cols]`` heatmaps
(tensors or arrays), the exact one first.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from compiler.errors import InvalidInputError


def _array(heatmap: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(heatmap, Tensor):
        heatmap = heatmap.detach().float().cpu().numpy()
    array = np.asarray(heatmap, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"a heatmap is [rows, cols], got shape {array.shape}")
    return array


def ssim(exact: Tensor | np.ndarray, approx: Tensor | np.ndarray) -> float:
    """Structural similarity (scikit-image's ``structural_similarity``) with ``data_range``
    the exact heatmap's range and the default 7×7 window (smaller for tiny heatmaps).
    1 means identical. A flat exact heatmap gives 1 if the approximation is equal, else 0.

    >>> a = np.arange(64.0).reshape(8, 8)
    >>> ssim(a, a), round(ssim(a, a[::-1]), 2)
    (1.0, -0.93)
    """
    from skimage.metrics import structural_similarity

    e, a = _array(exact), _array(approx)
    if e.ndim != 2 or e.shape != a.shape:
        raise InvalidInputError(
            f"SSIM compares two heatmaps of one shape [rows, cols], got {list(e.shape)} and "
            f"{list(a.shape)}"
        )
    span = float(e.max() - e.min())
    if span == 0:
        return 1.0 if np.array_equal(e, a) else 0.0
    side = min(e.shape)
    window = min(7, side if side % 2 else side - 1)
    if window < 3:
        raise InvalidInputError(f"SSIM needs a heatmap of at least 3×3 cells, got {list(e.shape)}")
    return float(structural_similarity(e, a, data_range=span, win_size=window))


def spearman(exact: Tensor | np.ndarray, approx: Tensor | np.ndarray) -> float:
    """Spearman rank correlation of the cells (1: the same order of importance)."""
    from scipy.stats import spearmanr

    e, a = _array(exact).ravel(), _array(approx).ravel()
    if np.ptp(e) == 0 or np.ptp(a) == 0:
        return 1.0 if np.array_equal(e, a) else 0.0
    return float(spearmanr(e, a).statistic)


def top_iou(
    exact: Tensor | np.ndarray, approx: Tensor | np.ndarray, fraction: float = 0.1
) -> float:
    """Intersection over union of the ``fraction`` of cells where each heatmap is lowest (the
    largest drop in the predicted score: the regions an explanation points at).

    >>> e = np.arange(100.0).reshape(10, 10)
    >>> top_iou(e, e), top_iou(e, -e)
    (1.0, 0.0)
    """
    e, a = _array(exact).ravel(), _array(approx).ravel()
    count = max(1, int(round(fraction * e.size)))
    top_e = set(np.argsort(e, kind="stable")[:count].tolist())
    top_a = set(np.argsort(a, kind="stable")[:count].tolist())
    return len(top_e & top_a) / len(top_e | top_a)


def compare(exact: Tensor | np.ndarray, approx: Tensor | np.ndarray) -> dict[str, float]:
    """All three metrics, as the benchmarks report them."""
    return {
        "ssim": ssim(exact, approx),
        "spearman": spearman(exact, approx),
        "top10_iou": top_iou(exact, approx, 0.1),
    }
