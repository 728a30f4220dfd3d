"""Each incremental convolution's achieved rate against this machine's sgemm rate, measured in
the same run: where the time of an exact plan goes, and how far each GEMM is from the CPU's
limit.

For each gather-convolution step of the plan (patch 16, 224 px, fp32, the torch reference
backend), the seconds its launches take over all batches (gather, convolution and fused
epilogue), its multiply-adds (``M × N × K`` per group, per query), and its rate in GFMA/s.
Beside it is the rate of ``torch.mm`` on one GEMM of the same ``M × K`` by ``K × N`` shape
(random data, best of 3): the rate this CPU reaches on that shape. The last line of each table
is the plan as a whole against the sgemm rate of a 4096³ GEMM.

    python -m benchmarks.conv_rates [--models vgg16,resnet18] [--stride 8]
                                    [--json benchmarks/conv_rates.json]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

import torch
import torchvision

from benchmarks.common import write_json
from compiler.physical import KernelId
from krypton_ql import models
from krypton_ql.options import Options
from krypton_ql.plans.occlusion import OcclusionPlan


def _gemm_rate(m: int, n: int, k: int) -> float:
    """GFMA/s of ``torch.mm`` on ``[m, k] × [k, n]`` (best of 3)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return m * n * k / best / 1e9


def rates(name: str, stride: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    image = models.imagenet_transform(224)(models.sample_photo("astronaut"))
    plan = OcclusionPlan(model, Options.build(tuple(image.shape), patch=16, stride=stride))
    seconds: dict[int, float] = defaultdict(float)
    queries: dict[int, int] = defaultdict(int)
    index = {id(step): i for i, step in enumerate(plan.physical.steps)}
    run = plan.runner.run

    def timed(step: Any, inputs: list, env: Any) -> Any:
        start = time.perf_counter()
        value = run(step, inputs, env)
        seconds[index[id(step)]] += time.perf_counter() - start
        queries[index[id(step)]] += len(env.batch.image)
        return value

    plan.evaluate(image, progress=False)  # warm-up
    plan.runner.run = timed  # type: ignore[method-assign]
    start = time.perf_counter()
    with torch.no_grad():
        plan.evaluate(image, progress=False)
    total = time.perf_counter() - start
    rows, fma_total = [], 0.0
    for i, step in enumerate(plan.physical.steps):
        launch = step.launch
        if step.kernel is not KernelId.GATHER_CONV or launch is None or not seconds[i]:
            continue
        fma = queries[i] * launch.m * launch.n * launch.k * launch.groups
        fma_total += fma
        rows.append({
            "step": step.node.name, "M": f"{launch.batch}×{launch.m}", "N": launch.n,
            "K": launch.k, "groups": launch.groups, "seconds": seconds[i],
            "gfma_s": fma / seconds[i] / 1e9,
            "sgemm_same_shape_gfma_s": _gemm_rate(launch.batch * launch.m, launch.n, launch.k),
        })  # fmt: skip
    return {"model": name, "stride": stride, "positions": len(plan.positions),
            "plan_seconds": total, "conv_seconds": sum(r["seconds"] for r in rows),
            "conv_gfma_s": fma_total / max(sum(r["seconds"] for r in rows), 1e-9) / 1e9,
            "sgemm_4096_gfma_s": _gemm_rate(4096, 4096, 4096), "convolutions": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16,resnet18")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results = []
    for name in args.models.split(","):
        result = rates(name, args.stride)
        results.append(result)
        print(f"{name}, stride {args.stride} ({result['positions']} positions): plan "
              f"{result['plan_seconds']:.2f} s, convolutions {result['conv_seconds']:.2f} s at "
              f"{result['conv_gfma_s']:.1f} GFMA/s; sgemm 4096³ "
              f"{result['sgemm_4096_gfma_s']:.1f} GFMA/s")  # fmt: skip
        for row in result["convolutions"]:
            print(f"  {row['step']:<28} M={row['M']:<9} N={row['N']:<4} K={row['K']:<5} "
                  f"{row['seconds']:6.3f} s {row['gfma_s']:6.1f} GFMA/s (sgemm same shape "
                  f"{row['sgemm_same_shape_gfma_s']:.1f})")  # fmt: skip
    if args.json:
        write_json(args.json, "results", results)


if __name__ == "__main__":
    main()
