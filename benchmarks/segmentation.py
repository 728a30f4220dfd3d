"""Region-score heatmaps of segmentation models: naive re-inference vs exact incremental, fp32,
on this machine's CPU.

torchvision's ``lraspp_mobilenet_v3_large`` and ``fcn_resnet50`` (random weights with batch-norm
statistics from a few random batches, 21 classes) and a small U-Net (``unet``: four levels,
transposed-convolution decoder, 4 classes), one random image, the region the clean
image predicts as its most frequent class; the whole heatmap at ``--patch`` / ``--stride``.
Both methods are the library's (``naive_heatmap`` and ``occlusion_heatmap`` with the same
region), so the ratio is measured on the same queries; the theoretical speedup is the plan's
FMA ratio with the patch at the centre.

    python -m benchmarks.segmentation [--size 256] [--patch 32] [--stride 32]
                                      [--models lraspp_mobilenet_v3_large,fcn_resnet50,unet]
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
from krypton_ql.integrations import segmentation


class UNet(torch.nn.Module):
    """The medical-imaging U-Net shape (Ronneberger et al.), small: four levels of two 3×3
    convolutions with batch norm (16 → 128 channels), max pools down, ``ConvTranspose2d``
    (2×2, stride 2) up, concatenated skips, a 1×1 head — no global layer anywhere."""

    def __init__(self, classes: int = 4, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        nn = torch.nn

        def block(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
            )  # fmt: skip

        self.down = nn.ModuleList()
        channels = 3
        for width in widths:
            self.down.append(block(channels, width))
            channels = width
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(w, w // 2, 2, stride=2) for w in reversed(widths[1:])
        )
        self.merge = nn.ModuleList(block(w, w // 2) for w in reversed(widths[1:]))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, layer in enumerate(self.down):
            x = layer(x if index == 0 else torch.nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], 1))
        return self.head(x)


def build(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "unet":
        model = UNet().train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(2, 3, size, size))
        return model.eval()
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
