"""A dense head maintained by its delta (``push_delta_through_dense_head``) against the same
plan with the head recomputed in full, and against naive re-inference, in one run.

    python -m benchmarks.dense_head [--size 64] [--patch 8] [--stride 1] [--json PATH]

The model is a small VGG-style classifier whose head is a wide ``Linear`` on the flattened
``64 × size/4 × size/4`` map (random weights, fp32, CPU); its box after the last convolution
covers a small part of that map, which is where the rule fires. VGG16 at 224 px is listed for
contrast: its box after the last pool is the whole 7×7 map, and the rule does not fire.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import krypton_ql as kql
from benchmarks import common
from compiler.physical import KernelId


def head_model(size: int) -> nn.Module:
    torch.manual_seed(0)
    cells = (size // 4) ** 2
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * cells, 1024), nn.ReLU(), nn.Linear(1024, 10),
    ).eval()  # fmt: skip


def best(run, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    model = head_model(args.size)
    torch.manual_seed(1)
    image = torch.rand(3, args.size, args.size)
    grid = dict(patch=args.patch, stride=args.stride)
    chosen = kql.compile(model, image.shape, **grid)
    delta = kql.compile(model, image.shape, linear_strategy="delta", **grid)
    full = kql.compile(model, image.shape, linear_strategy="recompute", **grid)
    fired = KernelId.DELTA_LINEAR in [s.kernel for s in chosen.physical.steps]
    runs = {
        "head by its delta": lambda: delta.run(image, progress=False),
        "head in full": lambda: full.run(image, progress=False),
        "naive": lambda: kql.naive_heatmap(model, image, progress=False, **grid),
    }
    heatmaps = {label: run() for label, run in runs.items()}
    error = float((heatmaps["head by its delta"] - heatmaps["naive"]).abs().max())
    seconds = {label: best(run) for label, run in runs.items()}
    rows = [
        {"run": label, "seconds": round(value, 4),
         "speedup_over_naive": round(seconds["naive"] / value, 2)}
        for label, value in seconds.items()
    ]  # fmt: skip
    print(f"{args.size}×{args.size}, patch {args.patch}, stride {args.stride}: "
          f"{len(delta.positions)} positions; max |delta − naive| = {error:.2e}; "
          f"the cost model chose the {'delta' if fired else 'full'} head")  # fmt: skip
    rows.append({"run": "the cost model's choice", "delta": fired})
    for row in rows[:3]:
        print(
            f"  {row['run']:18s} {row['seconds']:8.3f} s  {row['speedup_over_naive']:5.2f}× naive"
        )
    vgg = kql.compile(common.model("vgg16"), (3, 224, 224), patch=16, stride=32)
    vgg_fired = KernelId.DELTA_LINEAR in [s.kernel for s in vgg.physical.steps]
    print(f"  VGG16 224 px, patch 16, stride 32: the rule fired: {vgg_fired}")
    rows.append({"run": "vgg16 224 patch 16 stride 32", "delta": vgg_fired})
    if args.json:
        common.write_json(args.json, f"dense_head_{args.size}px_stride{args.stride}", rows)
    return rows


if __name__ == "__main__":
    main()
