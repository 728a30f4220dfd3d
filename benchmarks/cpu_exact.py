"""Naive batched re-inference vs exact incremental inference, fp32, on this machine's CPU.

VGG16 and ResNet18 (torchvision, random weights) and the pretrained EfficientNet-Lite0 at
224 px, patch 16, stride 4. To keep the
run short only a block of positions around the centre is computed; both methods compute the
same block, and the per-query ratio is what counts. The incremental plan's one-time cost (the
clean forward that materializes the views) is reported separately and included in the
projected full-heatmap times (2,809 positions). Naive runs at several batch sizes and the
fastest is the baseline.

    python -m benchmarks.cpu_exact [--block 8] [--repeat 2] [--naive-batch 1,4,16,64]
                                   [--models vgg16,resnet18,efficientnet_lite0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torchvision

import krypton_ql as kql
from compiler.types import Score
from krypton_ql import models
from krypton_ql.plans.naive import occlude


def block_positions(plan: kql.OcclusionPlan, block: int) -> torch.Tensor:
    rows, cols = plan.grid
    top, left = (rows - block) // 2, (cols - block) // 2
    r = torch.arange(top, top + block)
    c = torch.arange(left, left + block)
    return (r[:, None] * cols + c[None, :]).reshape(-1)


def naive_block(model, image, plan, positions, batch_size) -> tuple[torch.Tensor, float]:
    """Full re-inference of the occluded image at each position of the block."""
    device = image.device
    top = torch.as_tensor(plan.positions.top, device=device)[positions.to(device)]
    left = torch.as_tensor(plan.positions.left, device=device)[positions.to(device)]
    colour = torch.tensor(plan.occlusion.color, device=device)
    scores = []
    start = time.perf_counter()
    with torch.no_grad():
        target = model(image[None]).argmax(1)
        for i in range(0, len(positions), batch_size):
            batch = occlude(
                image[None].expand(len(top[i : i + batch_size]), -1, -1, -1),
                [top[i : i + batch_size], left[i : i + batch_size]],
                plan.occlusion.patch,
                colour,
            )
            scores.append(torch.softmax(model(batch), 1)[:, target].squeeze(1))
    _synchronize(device)
    return torch.cat(scores), time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def exact_block(plan, image, positions) -> tuple[torch.Tensor, float, float]:
    start = time.perf_counter()
    with torch.no_grad():
        plan.evaluate(image, positions=positions[:0])  # materialization alone
    setup = time.perf_counter() - start
    start = time.perf_counter()
    result = plan.evaluate(image, positions=positions)
    _synchronize(image.device)
    elapsed = time.perf_counter() - start
    rows, cols = plan.grid
    values = result.heatmaps[0, 0].reshape(rows * cols)[positions.to(image.device)]
    return values, elapsed, setup


def run(
    name: str,
    model: torch.nn.Module,
    block: int,
    repeat: int,
    naive_batches: list[int],
    device: torch.device,
) -> dict:
    torch.manual_seed(0)
    model = model.to(device)
    image = torch.randn(3, 224, 224, device=device)
    plan = kql.compile(model, image.shape, patch=16, stride=4)
    positions = block_positions(plan, block)
    naive_times = {size: float("inf") for size in naive_batches}
    best_exact = float("inf")
    for _ in range(repeat):
        for size in naive_batches:
            reference, t_naive = naive_block(model, image, plan, positions, size)
            naive_times[size] = min(naive_times[size], t_naive)
        values, t_exact, setup = exact_block(plan, image, positions)
        best_exact = min(best_exact, t_exact - setup)
    # The baseline is naive at its fastest batch size on this machine.
    naive_batch = min(naive_times, key=naive_times.__getitem__)
    best_naive = naive_times[naive_batch]
    queries, total = len(positions), len(plan.positions)
    per_naive, per_exact = best_naive / queries, best_exact / queries
    return {
        "model": name,
        "queries": queries,
        "naive_batch": naive_batch,
        "naive_s_per_query_by_batch": {b: t / queries for b, t in naive_times.items()},
        "exact_batch": plan.physical.batching.batch_size,
        "naive_s_per_query": per_naive,
        "exact_s_per_query": per_exact,
        "materialize_s": setup,
        "speedup_per_query": per_naive / per_exact,
        "projected_naive_s": per_naive * total,
        "projected_exact_s": setup + per_exact * total,
        "projected_speedup": per_naive * total / (setup + per_exact * total),
        "theoretical_speedup": plan.theoretical_speedup,
        "max_abs_diff": float((values - reference).abs().max()),
        "score": Score.PROB.value,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", type=int, default=8, help="block side, in positions")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--models", default="vgg16,resnet18,efficientnet_lite0")
    parser.add_argument(
        "--naive-batch",
        default="1,4,16,64",
        help="naive batch sizes to try; the fastest is the baseline",
    )
    args = parser.parse_args(argv)
    results = []
    for name in args.models.split(","):
        model = (
            models.efficientnet_lite0()
            if name == "efficientnet_lite0"
            else getattr(torchvision.models, name)().eval()
        )
        batches = [int(b) for b in args.naive_batch.split(",")]
        row = run(name, model, args.block, args.repeat, batches, torch.device(args.device))
        results.append(row)
        print(
            f"{name:9s} naive {row['naive_s_per_query'] * 1e3:7.1f} ms/query "
            f"(batch {row['naive_batch']})  exact "
            f"{row['exact_s_per_query'] * 1e3:7.1f} ms/query  speedup "
            f"{row['speedup_per_query']:.2f}× (theory {row['theoretical_speedup']:.2f}×)  "
            f"full heatmap {row['projected_naive_s']:.0f} s → {row['projected_exact_s']:.0f} s "
            f"({row['projected_speedup']:.2f}×)  max|Δ| {row['max_abs_diff']:.1e}",
            flush=True,
        )
    meta = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": "float32",
    }
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"meta": meta, "results": results}, out, indent=2)


if __name__ == "__main__":
    main()
