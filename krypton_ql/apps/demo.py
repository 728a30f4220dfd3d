"""``make demo``: explain the pretrained EfficientNet-Lite0's predictions on four photos.

For each scikit-image sample photo: the predicted class, the exact incremental heatmap (and
the naive one, to compare time and values), the theoretical speedup, and a PNG overlay; then
the approximate heatmap at ``--tau`` (0.7 met SSIM 0.9 when tuned on chelsea and coffee, see
benchmarks/RESULTS.md) beside the exact one, with its SSIM.

    python -m krypton_ql.apps.demo [--out DIR] [--patch 16] [--stride 8] [--photos chelsea,coffee]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

import krypton_ql as kql
from krypton_ql import models, quality
from krypton_ql.render import comparison_png, drop_summary, overlay_png


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    model, classes = models.efficientnet_lite0(), models.imagenet_classes()
    shape, geometry = (3, models.CROP, models.CROP), dict(patch=args.patch, stride=args.stride)
    plan = kql.compile(model, shape, **geometry)
    approximate = kql.compile(model, shape, tau=args.tau, **geometry) if args.tau < 1 else None
    rows, cols = plan.grid
    print(
        f"EfficientNet-Lite0, patch {args.patch}, stride {args.stride}: {rows}×{cols} = "
        f"{rows * cols} occlusion queries per photo; theoretical speedup "
        f"{plan.theoretical_speedup:.2f}× (torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads)\n"
    )
    for name in args.photos.split(","):
        _photo(args, name, model, classes, plan, approximate)
    return 0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Occlusion heatmaps of EfficientNet-Lite0.")
    parser.add_argument("--out", default="demo-output", help="folder for the PNG overlays")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--photos", default=",".join(models.SAMPLE_PHOTOS))
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--tau", type=float, default=0.7, help="approximate τ (1: skip it)")
    parser.add_argument(
        "--naive-batch",
        type=int,
        default=16,
        help="images per forward of the naive baseline (the paper's CPU batch)",
    )
    return parser.parse_args(argv)


def _photo(
    args: argparse.Namespace, name: str, model: Any, classes: Any, plan: Any, approximate: Any
) -> None:
    """One photo: its exact heatmap (timed, beside naive re-inference unless ``--no-naive``),
    its overlay, and with ``approximate`` the τ heatmap beside the exact one."""
    image = models.preprocess(models.sample_photo(name))
    geometry = ((args.patch, args.patch), (args.stride, args.stride))
    start = time.perf_counter()
    result = plan.evaluate(image, progress=sys.stderr.isatty())
    exact_time = time.perf_counter() - start
    heatmap, base = result.heatmaps[0, 0], float(result.base[0, 0])
    label = classes[int(result.targets[0, 0])]
    line = (
        f"{name:10s} {label} (class {int(result.targets[0, 0])}, p={base:.3f})  "
        f"exact {exact_time:5.1f} s"
    )
    if not args.no_naive:
        start = time.perf_counter()
        naive = kql.naive_heatmap(
            model, image, patch=args.patch, stride=args.stride, batch_size=args.naive_batch
        )
        naive_time = time.perf_counter() - start
        line += (
            f"  naive {naive_time:5.1f} s  ({naive_time / exact_time:.2f}× faster, "
            f"max |Δ| {float((naive - heatmap).abs().max()):.1e})"
        )
    photo = models.unnormalize(image)
    path = overlay_png(f"{args.out}/{name}.png", photo, heatmap, base,
                       f"{name}: {label} (p={base:.2f})", *geometry)  # fmt: skip
    print(f"{line}\n{'':11s}{drop_summary(heatmap, base)}; wrote {path}")
    if approximate is None:
        return
    start = time.perf_counter()
    approx = approximate.run(image)
    approx_time = time.perf_counter() - start
    path = comparison_png(f"{args.out}/{name}_tau.png", photo, heatmap, approx, base,
                          ("exact", f"approximate, τ = {args.tau:g}"), *geometry)  # fmt: skip
    print(
        f"{'':11s}τ = {args.tau:g}: {approx_time:4.1f} s ({exact_time / approx_time:.2f}× "
        f"faster than exact), SSIM {quality.ssim(heatmap, approx):.3f}; wrote {path}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
