"""Heatmap pictures: the photo with the occlusion heatmap overlaid and a colour bar.

Colour limits follow the paper's convention (research §1.4): relative to the clean probability
``p``, from ``0.75·p`` to ``min(1, 1.25·p)``, with ``jet_r`` so that red means the prediction
dropped when that region was hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def limits(base: float | None, heatmap: Tensor) -> tuple[float, float]:
    """Colour limits: the paper's ``[0.75·p, min(1, 1.25·p)]`` for a probability heatmap with
    clean probability ``p``; the heatmap's own range otherwise (``base`` None).

    >>> limits(0.8, torch.zeros(2, 2)), limits(None, torch.tensor([[1.0, 3.0]]))
    ((0.6000000000000001, 1.0), (1.0, 3.0))
    """
    if base is not None:
        return 0.75 * base, min(1.0, 1.25 * base)
    return float(heatmap.min()), float(heatmap.max())


def _draw(axis, photo: Tensor, heatmap: Tensor, span, patch, stride, region=None):
    """The photo with the heatmap over it; cell ``(i, j)`` at its patch centre; a region
    (boolean ``[H, W]``) outlined in white."""
    rows, cols = heatmap.shape
    extent = (
        patch[1] / 2 - stride[1] / 2,
        (cols - 1) * stride[1] + patch[1] / 2 + stride[1] / 2,
        (rows - 1) * stride[0] + patch[0] / 2 + stride[0] / 2,
        patch[0] / 2 - stride[0] / 2,
    )
    axis.imshow(photo.permute(1, 2, 0).cpu().numpy())
    shown = axis.imshow(
        heatmap.float().cpu().numpy(),
        cmap="jet_r",
        alpha=0.55,
        vmin=span[0],
        vmax=span[1],
        extent=extent,
        interpolation="bilinear",
    )
    _outline(axis, region)
    axis.set_xlim(-0.5, photo.shape[2] - 0.5)
    axis.set_ylim(photo.shape[1] - 0.5, -0.5)
    axis.axis("off")
    return shown


def _outline(axis, region: Tensor | None) -> None:
    """The region's border (a segmentation region score's pixels), white over black."""
    if region is None or not bool(region.any()):
        return
    mask = torch.nn.functional.pad(region.float().cpu(), (1, 1, 1, 1)).numpy()
    for colour, width in (("black", 2.6), ("white", 1.3)):
        axis.contour(
            range(-1, mask.shape[1] - 1), range(-1, mask.shape[0] - 1), mask, levels=[0.5],
            colors=colour, linewidths=width,
        )  # fmt: skip


def overlay_png(
    path: str | Path,
    photo: Tensor,
    heatmap: Tensor,
    base: float | None,
    title: str,
    patch: tuple[int, ...],
    stride: tuple[int, ...],
    region: Tensor | None = None,
) -> Path:
    """Write ``photo`` ([3,H,W] in [0,1]) beside the heatmap overlay, with a colour bar;
    ``region`` (boolean ``[H, W]``, a region score's pixels) is outlined on both.

    ``base`` is the clean probability of a probability heatmap (the paper's colour limits,
    red = the prediction dropped); None colours any other heatmap by its own range.
    Cell ``(i, j)`` is drawn at the centre of its patch, ``(i·Sy + Ph/2, j·Sx + Pw/2)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.4), constrained_layout=True)
    axes[0].imshow(photo.permute(1, 2, 0).cpu().numpy())
    _outline(axes[0], region)
    axes[0].set_title(title, fontsize=10)
    axes[0].axis("off")
    shown = _draw(axes[1], photo, heatmap, limits(base, heatmap), patch, stride, region)
    caption = "probability with the patch here (red: dropped)" if base is not None else "value"
    axes[1].set_title(caption, fontsize=10)
    figure.colorbar(shown, ax=axes[1], fraction=0.046)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def segments_png(
    path: str | Path,
    photo: Tensor,
    painted: Tensor,
    labels: Tensor,
    base: float | None,
    title: str,
) -> Path:
    """Write ``photo`` ([3,H,W] in [0,1]) with its segments outlined beside the segments
    painted with their values (``painted`` ``[H, W]``, NaN on segments with no value; colour
    limits as ``overlay_png``'s), the outlines drawn over both."""
    from skimage.segmentation import find_boundaries

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edges = find_boundaries(labels.cpu().numpy(), mode="inner")
    picture = photo.permute(1, 2, 0).cpu().numpy().copy()
    outlined = picture.copy()
    outlined[edges] = (1.0, 1.0, 0.0)  # yellow borders
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.4), constrained_layout=True)
    axes[0].imshow(outlined)
    axes[0].set_title(f"{title} ({int(labels.unique().numel())} segments)", fontsize=10)
    values = painted.float().cpu()
    known = values[~torch.isnan(values)]
    span = limits(base, known if known.numel() else torch.zeros(1))
    axes[1].imshow(picture)
    shown = axes[1].imshow(values.numpy(), cmap="jet_r" if base is not None else "jet",
                           alpha=0.6, vmin=span[0], vmax=span[1] if span[1] > span[0] else
                           span[0] + 1e-6, interpolation="nearest")  # fmt: skip
    border = torch.zeros(*edges.shape, 4)
    border[torch.from_numpy(edges)] = torch.tensor([0.0, 0.0, 0.0, 0.8])
    axes[1].imshow(border.numpy(), interpolation="nearest")
    caption = "probability with the segment hidden (red: dropped)" if base is not None else (
        "value per segment")  # fmt: skip
    axes[1].set_title(caption, fontsize=10)
    for axis in axes:
        axis.axis("off")
    figure.colorbar(shown, ax=axes[1], fraction=0.046)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def comparison_png(
    path: str | Path,
    photo: Tensor,
    exact: Tensor,
    approx: Tensor,
    base: float | None,
    labels: tuple[str, str],
    patch: tuple[int, ...],
    stride: tuple[int, ...],
    region: Tensor | None = None,
) -> Path:
    """Exact and approximate heatmaps side by side on the same colour scale (the paper's
    limits around ``base``, or the exact heatmap's range when it is None), with SSIM,
    Spearman correlation and top-10% IoU in the title."""
    from krypton_ql import quality

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.4), constrained_layout=True)
    span = limits(base, exact)
    for axis, heatmap, label in zip(axes, (exact, approx), labels):
        shown = _draw(axis, photo, heatmap, span, patch, stride, region)
        axis.set_title(label, fontsize=10)
    scores = quality.compare(exact, approx)
    figure.suptitle(
        f"SSIM {scores['ssim']:.3f}, Spearman {scores['spearman']:.3f}, top-10% IoU "
        f"{scores['top10_iou']:.2f}",
        fontsize=10,
    )
    figure.colorbar(shown, ax=axes[1], fraction=0.046)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _grey(values: Tensor) -> Tensor:
    """A slice or signal's first channel scaled to [0, 1] (a flat one is mid-grey)."""
    values = values.float().cpu()
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else torch.full_like(values, 0.5)


def montage_png(
    path: str | Path,
    volume: Tensor,
    heatmap: Tensor,
    base: float | None,
    title: str,
    patch: tuple[int, ...],
    stride: tuple[int, ...],
    slices: int = 8,
) -> Path:
    """A volume heatmap ``[D', H', W']`` as a montage: up to ``slices`` heatmap slices along the
    first axis, evenly spaced, each over the input slice at its windows' centre (``volume``
    ``[C, D, H, W]``, its first channel in grey), with one colour bar (the paper's limits
    around ``base``, as ``overlay_png``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    depth = heatmap.shape[0]
    count = min(slices, depth)
    chosen = sorted({round(i * (depth - 1) / max(count - 1, 1)) for i in range(count)})
    columns = min(4, len(chosen))
    rows = -(-len(chosen) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.6 * columns + 0.8, 2.6 * rows + 0.5), squeeze=False,
        constrained_layout=True,
    )  # fmt: skip
    span = limits(base, heatmap)
    shown = None
    for axis, cell in zip(axes.flat, chosen):
        centre = min(volume.shape[1] - 1, int(cell * stride[0] + (patch[0] - 1) / 2))
        photo = _grey(volume[0, centre]).expand(3, -1, -1)
        shown = _draw(axis, photo, heatmap[cell], span, patch[1:], stride[1:])
        axis.set_title(f"slice {cell} (voxel {centre})", fontsize=8)
    for axis in list(axes.flat)[len(chosen) :]:
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    assert shown is not None  # a heatmap has at least one slice
    figure.colorbar(shown, ax=axes, fraction=0.03)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def signal_png(
    path: str | Path,
    signal: Tensor,
    heatmap: Tensor,
    base: float | None,
    title: str,
    patch: int,
    stride: int,
) -> Path:
    """A signal heatmap ``[L']`` under its signal ``[C, L]`` (every channel, offset): the
    heatmap as a colour strip and a line, cell ``i`` at its window's centre."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(2, 1, figsize=(9, 4.4), sharex=True, constrained_layout=True)
    values = signal.float().cpu()
    for channel, trace in enumerate(values[:12]):
        axes[0].plot(_grey(trace).numpy() + channel, linewidth=0.6, color="black")
    axes[0].set_title(title, fontsize=10)
    axes[0].set_yticks([])
    centres = [i * stride + (patch - 1) / 2 for i in range(heatmap.shape[0])]
    low, high = limits(base, heatmap[None])
    strip = axes[1].imshow(
        heatmap.float().cpu().numpy()[None], cmap="jet_r", vmin=low, vmax=high, aspect="auto",
        extent=(centres[0] - stride / 2, centres[-1] + stride / 2, low, high), alpha=0.55,
    )  # fmt: skip
    axes[1].plot(centres, heatmap.float().cpu().numpy(), color="black", linewidth=0.8)
    caption = "probability with the window here (red: dropped)" if base is not None else "value"
    axes[1].set_title(caption, fontsize=10)
    figure.colorbar(strip, ax=axes[1], fraction=0.046)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


@dataclass(frozen=True)
class Layer:
    """One layer of a plan picture: its name, feature map, update box (at the query in the
    middle of the grid; None when the layer is not boxed), whether τ cut it, and its
    multiply-adds per query, naive and incremental (0 for layers without FMAs)."""

    name: str
    size: tuple[int, int]
    box: tuple[int, int, int, int] | None  # (y, x, h, w)
    cut: bool
    naive_fma: int
    incremental_fma: int
    window: bool  # a convolution or pool: drawn with its box


def plan_layers(plan) -> list[Layer]:
    """What ``plan_png`` draws, per node of the rewritten plan that is a window operator or
    has FMAs (a drill-down or guarded plan: the plan it runs)."""
    from compiler.cost import incremental_cost, naive_cost
    from compiler.ir import JoinAggregate, Pool

    while not hasattr(plan, "optimized"):  # a guarded or drill-down plan: the one it runs
        plan = getattr(plan, "inner", None) or plan.fine
    logical, rewritten, origins = plan.logical, plan.optimized.plan, plan.optimized.origins
    rows, cols = plan.grid
    query = (rows // 2) * cols + cols // 2
    layers = []
    for node in rewritten:
        if node.name not in logical:
            continue  # a node the rewrite inserted (a projection): no naive counterpart
        source = logical[node.name]
        naive = naive_cost(source, [logical[i] for i in source.inputs]).fma
        incremental = incremental_cost(node, [rewritten[i] for i in node.inputs]).fma
        window = isinstance(node.op, JoinAggregate | Pool)
        if not (window or naive or incremental):
            continue
        update, box = node.update, None
        if node.name in origins and update is not None and update.box is not None:
            y, x = (int(o[query]) for o in origins[node.name])
            box = (y, x, update.box.h, update.box.w)
        spatial = node.schema.is_spatial
        size = (node.schema.size.h, node.schema.size.w) if spatial else (1, 1)
        cut = update is not None and update.cut is not None
        layers.append(Layer(_short(node), size, box, cut, naive, incremental, window))
    return layers


def plan_png(plan, path: str | Path, measured: float | None = None) -> Path:
    """The rewritten plan as a picture (``plan_layers``): every boxed convolution's and pool's
    feature map with its update box drawn to scale (≈ and red: cut by τ), and per layer the
    multiply-adds of naive re-inference against the incremental plan, with the theoretical
    (and ``measured``, if given) speedup."""
    import math

    layers = plan_layers(plan)
    boxed = [layer for layer in layers if layer.window and layer.box is not None]
    counted = [layer for layer in layers if layer.naive_fma or layer.incremental_fma]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    per_row = 12
    box_rows = max(1, math.ceil(len(boxed) / per_row))
    figure = plt.figure(figsize=(13, 1.25 * box_rows + 3.6), constrained_layout=True)
    grid = figure.add_gridspec(box_rows + 1, per_row, height_ratios=[1.0] * box_rows + [2.6])
    for i, layer in enumerate(boxed):
        axis = figure.add_subplot(grid[i // per_row, i % per_row])
        assert layer.box is not None  # boxed layers only
        (height, width), (y, x, h, w) = layer.size, layer.box
        axis.add_patch(plt.Rectangle((0, 0), width, height, color="#e8ebf0"))
        axis.add_patch(plt.Rectangle((x, y), w, h, color="#c0392b" if layer.cut else "#2c6fbb"))
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_aspect("equal")
        axis.set_xticks([])
        axis.set_yticks([])
        title = f"{'≈' if layer.cut else ''}{layer.name}\n{height}×{width}, box {h}×{w}"
        axis.set_title(title, fontsize=6)
    bars = figure.add_subplot(grid[box_rows, :])
    where = range(len(counted))
    naive = [layer.naive_fma for layer in counted]
    bars.bar([w - 0.2 for w in where], naive, width=0.4, color="#9aa3b1", label="naive")
    colours = ["#c0392b" if layer.cut else "#2c6fbb" for layer in counted]
    incremental = [max(layer.incremental_fma, 1) for layer in counted]
    bars.bar([w + 0.2 for w in where], incremental, width=0.4, label="incremental", color=colours)
    bars.set_yscale("log")
    bars.set_ylabel("multiply-adds per query")
    bars.set_xticks(list(where), [layer.name for layer in counted], rotation=90, fontsize=6)
    bars.legend(loc="upper right", fontsize=8)
    title = f"theoretical speedup {plan.theoretical_speedup:.2f}× (patch at the centre)"
    if measured is not None:
        title += f", measured {measured:.2f}×"
    bars.set_title(title, fontsize=10)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _short(node) -> str:
    """A layer's module name, shortened for a picture."""
    source = node.source.split(" (")[0].split(" in ")[-1] or node.name
    return source if len(source) <= 18 else "…" + source[-17:]


def drop_summary(heatmap: Tensor, base: float) -> str:
    """Where hiding the image hurts the prediction most."""
    flat = int(torch.argmin(heatmap))
    row, col = divmod(flat, heatmap.shape[1])
    return f"largest drop {base - float(heatmap.min()):.3f} at cell ({row}, {col})"
