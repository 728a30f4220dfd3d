"""An SSIM target as a user asks for it, on photos no tuning set holds: the planner's choice
against exact and naive re-inference, in one run.

For each model: its profile (the shipped one for the built-in model, else ``kql.tune`` on the
first ``--tune-images`` of the default tuning set, timed), then for each held-out photo (the
12 of ``benchmarks.approx_guard``: scikit-image photos the tuning set does not use) the exact
heatmap and the ``ssim=`` plan's, each timed (the plans compiled once before), the naive time
(measured on ``--naive-sample`` positions and scaled to the grid), the true SSIM against exact,
the guard's estimate, and the positions run. Patch 16, stride 4 (2,809 positions at 224 px),
fp32, this process's device.

    python -m benchmarks.approx_target --model efficientnet_lite0 [--json FILE]
    python -m benchmarks.approx_target --model resnet18 --tune-images 24 [--save-profile F]
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch

import krypton_ql as kql
from benchmarks import approx_guard
from benchmarks.approx import naive_seconds
from benchmarks.gpu import build
from krypton_ql import models, quality

PATCH, STRIDE = 16, 4


def transform(name: str):
    return models.preprocess if name == "efficientnet_lite0" else models.imagenet_transform(224)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--ssim", type=float, default=0.9)
    parser.add_argument("--stride", type=int, default=STRIDE)
    parser.add_argument("--tune-images", type=int, default=24)
    parser.add_argument("--profile", default=None, help="a saved profile instead of tuning")
    parser.add_argument("--save-profile", default=None)
    parser.add_argument("--photos", type=int, default=12, help="how many held-out photos")
    parser.add_argument("--drilldown", type=float, default=None, help="also tune drill-down")
    parser.add_argument("--naive-sample", type=int, default=64)
    parser.add_argument("--naive-batch", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    model = build(args.model)
    grid = dict(patch=PATCH, stride=args.stride)
    began = time.perf_counter()
    if args.profile:
        profile = kql.Profile.load(args.profile)
    elif args.model == "efficientnet_lite0" and args.tune_images == 24:
        profile = kql.tune(model, ssim=args.ssim, **grid)  # the shipped one, where it fits
    else:
        sample = kql.tuning_images(transform(args.model))[: args.tune_images]
        profile = kql.tune(model, sample, ssim=args.ssim, drilldown=args.drilldown, **grid)
    tuning_seconds = time.perf_counter() - began
    if args.save_profile:
        profile.save(args.save_profile)
    print(profile.report(args.ssim))
    names = [*approx_guard.HELD_OUT, "stereo_motorcycle_left", "stereo_motorcycle_right"]
    names = names[: args.photos]
    convert = transform(args.model)
    exact_plan = kql.compile(model, (3, 224, 224), **grid)
    approx_plan = kql.compile(model, (3, 224, 224), ssim=args.ssim, profile=profile, **grid)
    print(approx_plan.explain().split("\n\n")[0])
    rows = []
    for name in names:
        image = convert(approx_guard.photo(name))
        start = time.perf_counter()
        exact = exact_plan.evaluate(image, progress=False)
        exact_s = time.perf_counter() - start
        start = time.perf_counter()
        approx = approx_plan.evaluate(image, progress=False)
        approx_s = time.perf_counter() - start
        naive_s = naive_seconds(model, image, args.naive_sample, args.naive_batch)
        truth, got = exact.heatmaps[0, 0], approx.heatmaps[0, 0]
        estimate = None if approx.ssim_estimate is None else float(approx.ssim_estimate[0, 0])
        row = {
            "photo": name, "ssim": quality.ssim(truth, got), "estimate": estimate,
            "queries": approx.queries, "positions": len(exact_plan.positions),
            "exact_s": exact_s, "approx_s": approx_s, "naive_s": naive_s,
        }  # fmt: skip
        rows.append(row)
        print(
            f"{name:<24} SSIM {row['ssim']:.3f} (estimate {estimate}) "
            f"{approx.queries:5d} queries  exact {exact_s:6.2f} s  ≈ {approx_s:6.2f} s  "
            f"({exact_s / approx_s:.2f}×; {naive_s / approx_s:.1f}× over naive)",
            flush=True,
        )
    ssims = np.array([r["ssim"] for r in rows])
    estimates = [(r["estimate"], r["ssim"]) for r in rows if r["estimate"] is not None]
    summary = {
        "model": args.model, "ssim_target": args.ssim, "stride": args.stride,
        "chosen": approx_plan.choice.chosen.name if hasattr(approx_plan, "choice") else None,
        "predicted_speedup": approx_plan.choice.chosen.gain if hasattr(approx_plan, "choice")
        else None,
        "tuning_seconds": tuning_seconds, "profile": profile.fitted(),
        "made_by": profile.made_by,
        "speedup_over_exact": sum(r["exact_s"] for r in rows) / sum(r["approx_s"] for r in rows),
        "speedup_over_naive": sum(r["naive_s"] for r in rows) / sum(r["approx_s"] for r in rows),
        "exact_over_naive": sum(r["naive_s"] for r in rows) / sum(r["exact_s"] for r in rows),
        "share_at_target": float(np.mean(ssims >= args.ssim)),
        "below_0.85": int(np.sum(ssims < 0.85)), "worst_ssim": float(ssims.min()),
        "median_ssim": float(np.median(ssims)),
        "estimate_error_mean": float(np.mean([e - s for e, s in estimates])) if estimates else None,
        "estimate_error_mae": float(np.mean([abs(e - s) for e, s in estimates]))
        if estimates else None,
        "queries_fraction": sum(r["queries"] for r in rows) / sum(r["positions"] for r in rows),
    }  # fmt: skip
    print(json.dumps(summary, indent=2))
    if args.json:
        from benchmarks.common import write_json

        write_json(args.json, "runs", {"summary": summary, "photos": rows})
    return summary


if __name__ == "__main__":
    main()
