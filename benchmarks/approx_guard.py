"""An ``ssim`` target on photos the tuner never saw: the default tuning set, every candidate τ,
and the per-image quality guard (``krypton_ql.plans.guarded``), against exact heatmaps.

1. ``kql.tune`` on the default tuning set (``kql.tuning_images()``: 24 scikit-image photos and
   variants) measures SSIM for every τ; the report shows each τ's worst and criterion, and how
   often a smaller τ scored higher than a larger one on one image (non-monotone pairs).
2. Held-out photos (none in the tuning set): the exact heatmap, the tuned τ without the guard,
   and with it; for each, the true SSIM, the guard's estimate and its error, the relative
   error estimate, whether the image ran again, and the seconds of the exact and guarded runs.

EfficientNet-Lite0 (pretrained), 224 px, patch 16, stride 8, fp32, this process's device.

    python -m benchmarks.approx_guard [--ssim 0.9] [--profile FILE] [--json FILE]

``--profile FILE`` reads the tuning profile saved by an earlier run (``--save-profile FILE``)
instead of tuning again (about 12 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import skimage.data
import torch

import krypton_ql as kql
from krypton_ql import models, quality

PATCH, STRIDE = 16, 8
HELD_OUT = ("camera", "clock", "retina", "hubble_deep_field", "brick", "grass", "gravel",
            "cell", "text", "page")  # fmt: skip


def photo(name: str) -> np.ndarray:
    """A held-out photo ``H×W×3`` uint8 (grayscale ones stacked to three channels)."""
    if name.startswith("stereo_motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        picture = left if name.endswith("left") else right
    else:
        picture = getattr(skimage.data, name)()
    picture = picture if picture.ndim == 3 else np.stack([picture] * 3, -1)
    return np.ascontiguousarray(picture[..., :3])


def held_out() -> dict[str, torch.Tensor]:
    names = [*HELD_OUT, "stereo_motorcycle_left", "stereo_motorcycle_right"]
    return {name: models.preprocess(photo(name)) for name in names}


def non_monotone(profile: kql.Profile) -> tuple[int, int]:
    """(pairs of neighbouring τs where the smaller τ scored higher on an image, all pairs)."""
    taus = sorted((float(t) for t in profile.taus), reverse=True)
    worse = total = 0
    for high, low in zip(taus, taus[1:]):
        for a, b in zip(profile.taus[f"{high:g}"], profile.taus[f"{low:g}"]):
            total += 1
            worse += b > a + 1e-3
    return worse, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ssim", type=float, default=0.9)
    parser.add_argument("--json", default=None)
    parser.add_argument("--profile", default=None, help="a saved profile: skip tuning")
    parser.add_argument("--save-profile", default=None)
    args = parser.parse_args(argv)
    model = models.efficientnet_lite0()
    started = time.perf_counter()
    if args.profile:
        profile = kql.Profile.load(args.profile)
    else:
        profile = kql.tune(model, ssim=args.ssim, patch=PATCH, stride=STRIDE)
    if args.save_profile:
        profile.save(args.save_profile)
    tune_s = time.perf_counter() - started
    report = profile.report(args.ssim)
    print(report, f"\ntuned in {tune_s:.0f} s", flush=True)
    worse, pairs = non_monotone(profile)
    print(f"non-monotone neighbouring τ pairs on the tuning set: {worse} of {pairs}", flush=True)
    exact_plan = kql.compile(model, (3, 224, 224), patch=PATCH, stride=STRIDE)
    guarded = kql.compile(model, (3, 224, 224), patch=PATCH, stride=STRIDE, ssim=args.ssim,
                          profile=profile)  # fmt: skip
    plain = kql.compile(model, (3, 224, 224), patch=PATCH, stride=STRIDE, ssim=args.ssim,
                        profile=profile, guard=False)  # fmt: skip
    rows = []
    for name, image in held_out().items():
        t0 = time.perf_counter()
        exact = exact_plan.evaluate(image, progress=False).heatmaps[0, 0]
        t1 = time.perf_counter()
        unguarded = plain.evaluate(image, progress=False).heatmaps[0, 0]
        t2 = time.perf_counter()
        result = guarded.evaluate(image, progress=False)
        t3 = time.perf_counter()
        truth = quality.ssim(exact, result.heatmaps[0, 0])
        # What the guard decided on: the first pass's estimate (the guard's own sample).
        cells = np.arange(exact.numel())
        chosen = np.sort(np.random.default_rng(0).choice(cells, guarded.sample_size(len(cells)),
                                                         replace=False))  # fmt: skip
        first = quality.ssim_estimate(unguarded, chosen, exact.reshape(-1)[chosen].numpy())
        estimate = float(result.ssim_estimate[0, 0])
        relative = float((result.heatmaps[0, 0] - exact).abs().max() / result.base[0, 0].abs())
        row = {
            "image": name,
            "ssim_unguarded": round(quality.ssim(exact, unguarded), 3),
            "first_estimate": round(first, 3),
            "ssim_guarded": round(truth, 3),
            "ssim_estimate": round(estimate, 3),
            "estimate_error": round(estimate - truth, 3),
            "relative_error_estimate": round(float(result.relative_error[0, 0]), 4),
            "relative_error_true": round(relative, 4),
            "rerun": bool(result.reruns),
            "exact_s": round(t1 - t0, 2),
            "unguarded_s": round(t2 - t1, 2),
            "guarded_s": round(t3 - t2, 2),
        }
        rows.append(row)
        print(row, flush=True)
    met = sum(r["ssim_guarded"] >= args.ssim for r in rows)
    summary = {
        "tuned_tau": profile.tau_for(args.ssim),
        "tune_s": round(tune_s, 1),
        "non_monotone_pairs": [worse, pairs],
        "held_out": len(rows),
        "met_unguarded": sum(r["ssim_unguarded"] >= args.ssim for r in rows),
        "met_guarded": met,
        "worst_guarded": min(r["ssim_guarded"] for r in rows),
        "reruns": sum(r["rerun"] for r in rows),
        "estimate_mae": round(float(np.mean([abs(r["estimate_error"]) for r in rows])), 3),
        "first_estimate_mae": round(
            float(np.mean([abs(r["first_estimate"] - r["ssim_unguarded"]) for r in rows])), 3
        ),
        "speedup_guarded_vs_exact": round(
            sum(r["exact_s"] for r in rows) / sum(r["guarded_s"] for r in rows), 2
        ),
        "speedup_unguarded_vs_exact": round(
            sum(r["exact_s"] for r in rows) / sum(r["unguarded_s"] for r in rows), 2
        ),
    }
    print(summary)
    if args.json:
        meta = {"machine": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(), "torch": torch.__version__,
                "ssim": args.ssim, "patch": PATCH, "stride": STRIDE}  # fmt: skip
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "profile": profile.taus, "report": report,
                       "summary": summary, "rows": rows}, handle, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
