"""Approximation and tuning: trade a little fidelity for speed, to a stated quality.

    python examples/approximation_and_tuning.py [--patch 32] [--stride 16] [--out DIR]

1. tune τ to SSIM 0.9 on two sample photos (chelsea, coffee);
2. explain a plan that uses the profile (``ssim=0.9``): approximate steps are marked ``≈``;
3. on a photo the tuning never saw (astronaut), compare exact, τ, and τ + drill-down (the
   lattice mode) — queries, time, SSIM — and write an exact-vs-approximate picture.
"""

from __future__ import annotations

import argparse
import time

import torch

import krypton_ql as kql
from krypton_ql import models, quality
from krypton_ql.render import comparison_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--out", default="approximation-output")
    args = parser.parse_args()
    model = models.efficientnet_lite0()
    photos = {n: models.preprocess(models.sample_photo(n)) for n in models.SAMPLE_PHOTOS}
    grid = dict(patch=args.patch, stride=args.stride)
    profile = kql.tune(model, torch.stack([photos["chelsea"], photos["coffee"]]), ssim=0.9, **grid)
    print(f"tuned: τ = {profile.tau_for(0.9):g} meets SSIM 0.9 on the sample "
          f"(SSIM by τ: { {t: round(min(v), 3) for t, v in profile.taus.items()} })")  # fmt: skip
    text = kql.explain(model, photos["astronaut"].shape, ssim=0.9, profile=profile, **grid)
    print("\n".join(line for line in text.splitlines() if "≈" in line)[:600])
    image = photos["astronaut"]
    runs = {
        "exact": dict(),
        "ssim 0.9 (τ)": dict(ssim=0.9, profile=profile),
        "τ + drill-down": dict(
            ssim=0.9, profile=profile, drilldown=0.05, speedup=2.5, drilldown_mode="lattice"
        ),  # fmt: skip
    }
    exact = None
    for label, options in runs.items():
        plan = kql.compile(model, image.shape, **grid, **options)
        start = time.perf_counter()
        result = plan.evaluate(image)
        seconds = time.perf_counter() - start
        heatmap = result.heatmaps[0, 0]
        exact = heatmap if exact is None else exact
        print(f"{label:15s} {result.queries:5d} queries {seconds:6.2f} s  "
              f"SSIM {quality.ssim(exact, heatmap):.3f}")  # fmt: skip
        last, base = heatmap, float(result.base[0, 0])
    path = comparison_png(
        f"{args.out}/astronaut.png", models.unnormalize(image), exact, last, base,
        ("exact", "τ + drill-down"), (args.patch, args.patch), (args.stride, args.stride),
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
