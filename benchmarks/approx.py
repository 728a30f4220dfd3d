"""Approximate occlusion against naive re-inference, in one process on one device.

Workloads:
1. The paper's most aggressive setting: VGG16 (torchvision, random weights, calibrated batch
   norms), 224 px, patch 16, stride 4, τ = 0.5 and drill-down r = 0.1, target 5 (grid mode).
2. Quality-targeted EfficientNet-Lite0 (pretrained): τ — and a lattice drill-down (r = 0.02)
   speedup target — tuned to SSIM 0.9 on two scikit-image photos (chelsea, coffee), then run on
   the two it never saw (astronaut, rocket): the tuned τ alone, the whole tuned profile (τ +
   drill-down), and for comparison fixed drill-downs in the paper's grid mode and in lattice
   mode; SSIM, Spearman and top-10% IoU against the exact heatmap.

Naive time is measured on ``--naive-sample`` evenly spaced positions and scaled to the whole
grid (0: run every position); the approximate runs are whole heatmaps.

    python -m benchmarks.approx [--device cpu|cuda] [--naive-sample 64] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import krypton_ql as kql
from benchmarks.gpu import _synchronize, build
from krypton_ql import models, quality
from krypton_ql.plans.naive import occlude

PATCH, STRIDE = 16, 4


def naive_seconds(model, image, sample: int, batch: int) -> float:
    """Seconds naive re-inference takes for the whole grid (measured on ``sample`` positions
    spread over it and scaled, or on all of them)."""
    plan = kql.compile(model, image.shape, patch=PATCH, stride=STRIDE)
    total = len(plan.positions)
    chosen = torch.linspace(0, total - 1, sample).long() if sample else torch.arange(total)
    device = image.device
    top = torch.as_tensor(plan.positions.top, device=device)[chosen.to(device)]
    left = torch.as_tensor(plan.positions.left, device=device)[chosen.to(device)]
    colour = torch.zeros(image.shape[0], device=device, dtype=image.dtype)
    with torch.no_grad():
        model(image[None])  # warm-up
        _synchronize(device)
        start = time.perf_counter()
        for i in range(0, len(chosen), batch):
            batch_images = image[None].expand(len(top[i : i + batch]), -1, -1, -1)
            corners = [top[i : i + batch], left[i : i + batch]]
            occluded = occlude(batch_images, corners, plan.occlusion.patch, colour)
            torch.softmax(model(occluded).float(), 1)
        _synchronize(device)
    return (time.perf_counter() - start) * total / len(chosen)


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--naive-sample", type=int, default=64)
    parser.add_argument("--naive-batch", type=int, default=16)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []

    # 1. VGG16, the paper's most aggressive setting
    torch.manual_seed(0)
    vgg = build("vgg16").to(device)
    image = torch.randn(3, 224, 224, device=device)
    naive = naive_seconds(vgg, image, args.naive_sample, args.naive_batch)
    settings = dict(patch=PATCH, stride=STRIDE, tau=0.5, drilldown=0.1, speedup=5)
    plan = kql.compile(vgg, image.shape, **settings)
    plan.run(image)  # warm-up (and autotuning on a GPU)
    result, seconds = timed(lambda: plan.evaluate(image))
    rows.append({"model": "vgg16", "mode": "τ=0.5 + drill-down r=0.1 t=5 (grid)",
                 "seconds": seconds, "naive_seconds": naive, "speedup": naive / seconds,
                 "queries": result.queries, "theoretical": plan.theoretical_speedup})  # fmt: skip
    print(rows[-1], flush=True)

    # 2. EfficientNet-Lite0, quality-targeted
    model = models.efficientnet_lite0().to(device)
    photos = {n: models.preprocess(models.sample_photo(n)).to(device) for n in models.SAMPLE_PHOTOS}
    sample = torch.stack([photos["chelsea"], photos["coffee"]])
    profile, tune_seconds = timed(
        lambda: kql.tune(
            model, sample, ssim=0.9, patch=PATCH, stride=STRIDE, drilldown=0.02,
            drilldown_mode="lattice", speedups=(4.0, 3.0, 2.5, 2.0),
        )
    )  # fmt: skip
    tau = profile.tau_for(0.9)
    print(f"tuned τ = {tau} in {tune_seconds:.0f} s: {profile.taus} {profile.drilldown}")
    for name in ("astronaut", "rocket"):
        image = photos[name]
        naive = naive_seconds(model, image, args.naive_sample, args.naive_batch)
        exact, exact_seconds = timed(
            lambda image=image: kql.occlusion_heatmap(model, image, patch=PATCH, stride=STRIDE)
        )
        tau_only = kql.Profile(profile.patch, profile.stride, profile.criterion, profile.taus)
        found = profile.speedup_for(0.9)
        modes = {
            f"τ={tau:g} (ssim 0.9, τ only)": dict(ssim=0.9, profile=tau_only),
            f"τ={tau:g} + lattice r=0.02 t={found} (ssim 0.9 profile)": dict(
                ssim=0.9, profile=profile
            ),
            f"τ={tau:g} + grid drill-down r=0.25 t=3": dict(tau=tau, drilldown=0.25, speedup=3),
            f"τ={tau:g} + lattice drill-down r=0.02 t=3.1": dict(
                tau=tau, drilldown=0.02, speedup=3.1, drilldown_mode="lattice"
            ),
        }
        rows.append({"model": "efficientnet_lite0", "photo": name, "mode": "exact",
                     "seconds": exact_seconds, "naive_seconds": naive,
                     "speedup": naive / exact_seconds})  # fmt: skip
        print(rows[-1], flush=True)
        for label, options in modes.items():
            plan = kql.compile(model, image.shape, patch=PATCH, stride=STRIDE, **options)
            result, seconds = timed(lambda plan=plan, image=image: plan.evaluate(image))
            heatmap = result.heatmaps[0, 0]
            rows.append({"model": "efficientnet_lite0", "photo": name, "mode": label,
                         "seconds": seconds, "naive_seconds": naive,
                         "speedup": naive / seconds, "queries": result.queries,
                         **quality.compare(exact, heatmap)})  # fmt: skip
            print(rows[-1], flush=True)
    meta = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "naive_sample": args.naive_sample,
    }
    report = {"meta": meta, "profile": json.loads(profile.to_json()), "results": rows}
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return report


if __name__ == "__main__":
    main()
