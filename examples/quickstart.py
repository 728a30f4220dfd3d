"""Quickstart: an exact occlusion heatmap of the built-in EfficientNet-Lite0, and its plan.

python examples/quickstart.py [--photo chelsea] [--patch 32] [--stride 16] [--out DIR]
"""

from __future__ import annotations

import argparse

import krypton_ql as kql
from krypton_ql import models
from krypton_ql.render import overlay_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default="chelsea", choices=models.SAMPLE_PHOTOS)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--out", default="quickstart-output")
    args = parser.parse_args()
    model = models.efficientnet_lite0()
    image = models.preprocess(models.sample_photo(args.photo))
    plan = kql.compile(model, image.shape, patch=args.patch, stride=args.stride)
    result = plan.evaluate(image)
    label = models.imagenet_classes()[int(result.targets[0, 0])]
    base = float(result.base[0, 0])
    print(
        f"{args.photo}: {label} (p={base:.3f}); heatmap {tuple(result.heatmaps.shape[2:])}, "
        f"{result.queries} queries, theoretical speedup {plan.theoretical_speedup:.2f}×"
    )
    print("\n".join(plan.explain().splitlines()[-8:]))
    path = overlay_png(
        f"{args.out}/{args.photo}.png",
        models.unnormalize(image),
        result.heatmaps[0, 0],
        base,
        f"{args.photo}: {label}",
        (args.patch, args.patch),
        (args.stride, args.stride),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
