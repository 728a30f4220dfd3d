"""Full occlusion heatmaps on one device, in one process: naive batched re-inference, Captum's
Occlusion, exact with the torch reference backend, and exact with the Triton backend.

Workloads (DESIGN §6): VGG16 and ResNet18 at 224 px and Inception3 at 299 px (torchvision,
random weights, batch norms calibrated), the pretrained EfficientNet-Lite0 at 224 px; patch 16,
stride 4, one image, every position. For each method: seconds per heatmap (best of
``--repeat``, after a warm-up run that also autotunes the Triton kernels and measures the
convolution choices), speedup over naive in the same run and precision, max |Δ| of the
probabilities against naive, and peak device memory above the model and image.

    python -m benchmarks.gpu [--models vgg16,resnet18,inception_v3,efficientnet_lite0]
                             [--precision fp32,bf16] [--methods naive,captum,torch,triton]
                             [--naive-batch 256] [--repeat 3] [--stride 4] [--size N]
                             [--device cuda] [--json benchmarks/gpu.json]

On the CPU (``--device cpu``, with ``--size``/``--stride`` small) it runs as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch
import torchvision

import krypton_ql as kql
from krypton_ql import models
from krypton_ql.options import PRECISIONS

SIZES = {"inception_v3": 299}


def build(name: str) -> torch.nn.Module:
    """A benchmark model in eval mode with realistic batch-norm statistics."""
    if name == "efficientnet_lite0":
        return models.efficientnet_lite0()
    if name == "inception_v3":
        model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    else:
        model = getattr(torchvision.models, name)(weights=None)
    return _calibrate(model, SIZES.get(name, 224))


def _calibrate(model: torch.nn.Module, size: int) -> torch.nn.Module:
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, size, size))
    return model.eval()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    function: Callable[[], torch.Tensor], device: torch.device, repeat: int
) -> tuple[torch.Tensor, float, int | None]:
    """Result, best seconds of ``repeat`` runs after a warm-up, and peak bytes allocated above
    what was live before (CUDA only)."""
    result = function()  # warm-up: autotuning, cuDNN algorithm search, choices
    best = float("inf")
    peak = None
    for _ in range(repeat):
        _synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        result = function()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) - base
    return result, best, peak


def captum_heatmap(model, image, patch: int, stride: int, batch: int) -> torch.Tensor:
    """Captum's Occlusion with baseline 0 gives ``p_clean − p_occluded`` averaged over the
    windows covering each pixel; its cost is one forward per window, as naive's."""
    from captum.attr import Occlusion

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x).float(), 1)

    with torch.no_grad():
        target = int(model(image[None]).argmax())
        return Occlusion(forward).attribute(
            image[None],
            sliding_window_shapes=(3, patch, patch),
            strides=(3, stride, stride),
            baselines=0.0,
            target=target,
            perturbations_per_eval=batch,
        )


def run_model(name: str, args: argparse.Namespace, precision: str) -> list[dict]:
    device = torch.device(args.device)
    dtype = PRECISIONS[precision]
    torch.manual_seed(0)
    size = args.size or SIZES.get(name, 224)
    model = build(name).to(device=device, dtype=dtype)
    image = torch.randn(3, size, size, device=device, dtype=dtype)
    options = dict(patch=args.patch, stride=args.stride)
    plans = {
        backend: kql.compile(model, image.shape, backend=backend, **options)
        for backend in ("torch", "triton")
        if backend in args.methods
    }
    methods: dict[str, Callable[[], torch.Tensor]] = {
        "naive": lambda: kql.naive_heatmap(model, image, batch_size=args.naive_batch, **options),
        "captum": lambda: captum_heatmap(model, image, args.patch, args.stride, args.naive_batch),
        **{f"exact ({b})": (lambda plan=plan: plan.run(image)) for b, plan in plans.items()},
    }
    chosen = {m: f for m, f in methods.items() if m.split(" ")[-1].strip("()") in args.methods}
    rows, reference, naive_time = [], None, None
    for method, function in chosen.items():
        result, seconds, peak = measure(function, device, args.repeat)
        if method == "naive":
            reference, naive_time = result, seconds
        difference = None
        if reference is not None and method != "captum":
            difference = float((result.float() - reference.float()).abs().max())
        row = {
            "model": name,
            "precision": precision,
            "method": method,
            "seconds": seconds,
            "speedup": naive_time / seconds if naive_time else None,
            "max_abs_diff": difference,
            "peak_bytes": peak,
        }
        if method.startswith("exact"):
            plan = plans[method.split("(")[1].rstrip(")")]
            row["batch_size"] = plan.physical.batching.batch_size
            row["theoretical_speedup"] = plan.theoretical_speedup
            row["conv_choices"] = {k: v.value for k, v in plan.runner.choices.items()}
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    speedup = f"{row['speedup']:6.2f}×" if row["speedup"] else "      —"
    diff = f"{row['max_abs_diff']:.1e}" if row["max_abs_diff"] is not None else "—"
    peak = f"{row['peak_bytes'] / 2**20:8.0f} MiB" if row["peak_bytes"] is not None else "—"
    return (
        f"{row['model']:18s} {row['precision']:5s} {row['method']:16s} "
        f"{row['seconds'] * 1e3:9.1f} ms  {speedup}  max|Δ| {diff:>7s}  peak {peak}"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16,resnet18,inception_v3,efficientnet_lite0")
    parser.add_argument("--precision", default="fp32,bf16", help="fp32, bf16 and/or fp16")
    parser.add_argument("--methods", default="naive,captum,torch,triton")
    parser.add_argument("--naive-batch", type=int, default=256, help="naive and Captum batch")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--size", type=int, help="image side (default: the model's)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    args.methods = args.methods.split(",")
    device = torch.device(args.device)
    meta = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "tf32": torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32,
        "command": "python -m benchmarks.gpu " + " ".join(argv or []),
    }
    print(meta, flush=True)
    results = []
    for precision in args.precision.split(","):
        for name in args.models.split(","):
            results += run_model(name, args, precision)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"meta": meta, "results": results}, out, indent=2)
    return results


if __name__ == "__main__":
    main()
