"""Region-score heatmaps of segmentation models: naive re-inference vs exact incremental, fp32,
on this machine's CPU.

torchvision's ``lraspp_mobilenet_v3_large`` and ``fcn_resnet50`` (random weights with batch-norm
statistics from a few random batches, 21 classes), one random image, the region the clean
image predicts as its most frequent class; the whole heatmap at ``--patch`` / ``--stride``.
Both methods are the library's (``naive_heatmap`` and ``occlusion_heatmap`` with the same
region), so the ratio is measured on the same queries; the theoretical speedup is the plan's
FMA ratio with the patch at the centre.

    python -m benchmarks.segmentation [--size 256] [--patch 32] [--stride 32]
                                      [--models lraspp_mobilenet_v3_large,fcn_resnet50]
                                      [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torchvision

import krypton_ql as kql
from krypton_ql import segmentation


def build(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {} if name.startswith("lraspp") else {"aux_loss": False}
    builder = getattr(torchvision.models.segmentation, name)
    model = builder(weights=None, weights_backbone=None, num_classes=21, **options).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, size, size))
    return model.eval()


def run(name: str, size: int, patch: int, stride: int) -> dict:
    model = build(name, size)
    torch.manual_seed(1)
    image = torch.rand(3, size, size)
    weights = segmentation.region_weights(model, image, None, None, (size, size))
    target = segmentation.default_target(weights)
    wrapper = segmentation.RegionScores(model, weights, None, "prob", (size, size)).eval()
    started = time.perf_counter()
    plan = kql.compile(wrapper, (3, size, size), patch=patch, stride=stride, score="logit",
                       target=target)  # fmt: skip
    compiled = time.perf_counter() - started
    started = time.perf_counter()
    exact = plan.run(image, progress=False)
    exact_seconds = time.perf_counter() - started
    started = time.perf_counter()
    naive = kql.naive_heatmap(wrapper, image, patch=patch, stride=stride, score="logit",
                              target=target, progress=False)  # fmt: skip
    naive_seconds = time.perf_counter() - started
    return {
        "model": name,
        "size": size,
        "patch": patch,
        "stride": stride,
        "positions": exact.numel(),
        "region_pixels": int((weights[target] > 0).sum()),
        "theoretical_speedup": round(plan.theoretical_speedup, 2),
        "compile_s": round(compiled, 1),
        "exact_s": round(exact_seconds, 1),
        "naive_s": round(naive_seconds, 1),
        "speedup": round(naive_seconds / exact_seconds, 2),
        "max_abs_diff": float((exact - naive).abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lraspp_mobilenet_v3_large,fcn_resnet50")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = [run(m, args.size, args.patch, args.stride) for m in args.models.split(",")]
    for row in rows:
        print(row, flush=True)
    if args.json:
        machine = platform.processor() or platform.machine()
        meta = {"machine": machine, "threads": torch.get_num_threads(), "torch": torch.__version__}
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
