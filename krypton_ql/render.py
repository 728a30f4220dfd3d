"""Heatmap pictures: the photo with the occlusion heatmap overlaid and a colour bar.

Colour limits follow the paper's convention (research §1.4): relative to the clean probability
``p``, from ``0.75·p`` to ``min(1, 1.25·p)``, with ``jet_r`` so that red means the prediction
dropped when that region was hidden.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def overlay_png(
    path: str | Path,
    photo: Tensor,
    heatmap: Tensor,
    base: float,
    title: str,
    patch: tuple[int, int],
    stride: tuple[int, int],
) -> Path:
    """Write ``photo`` ([3,H,W] in [0,1]) beside the heatmap overlay, with a colour bar.

    Cell ``(i, j)`` is drawn at the centre of its patch, ``(i·Sy + Ph/2, j·Sx + Pw/2)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, cols = heatmap.shape
    extent = (
        patch[1] / 2 - stride[1] / 2,
        (cols - 1) * stride[1] + patch[1] / 2 + stride[1] / 2,
        (rows - 1) * stride[0] + patch[0] / 2 + stride[0] / 2,
        patch[0] / 2 - stride[0] / 2,
    )
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.4), constrained_layout=True)
    picture = photo.permute(1, 2, 0).cpu().numpy()
    axes[0].imshow(picture)
    axes[0].set_title(title, fontsize=10)
    axes[1].imshow(picture)
    low, high = 0.75 * base, min(1.0, 1.25 * base)
    shown = axes[1].imshow(
        heatmap.float().cpu().numpy(),
        cmap="jet_r",
        alpha=0.55,
        vmin=low,
        vmax=high,
        extent=extent,
        interpolation="bilinear",
    )
    axes[1].set_xlim(-0.5, photo.shape[2] - 0.5)
    axes[1].set_ylim(photo.shape[1] - 0.5, -0.5)
    axes[1].set_title("probability with the patch here (red: dropped)", fontsize=10)
    for axis in axes:
        axis.axis("off")
    figure.colorbar(shown, ax=axes[1], fraction=0.046)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def drop_summary(heatmap: Tensor, base: float) -> str:
    """Where hiding the image hurts the prediction most."""
    flat = int(torch.argmin(heatmap))
    row, col = divmod(flat, heatmap.shape[1])
    return f"largest drop {base - float(heatmap.min()):.3f} at cell ({row}, {col})"
