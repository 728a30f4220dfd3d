"""Compile every Triton kernel specialization the runtime launches for the benchmark models, for
H100/H200 (``sm_90``) and A100 (``sm_80``), on a machine without a GPU; report registers,
spills, shared memory and tensor-core use per kernel × config × target
(``runtime.kernels.aot``).

    python -m benchmarks.compile_check [--models vgg16,resnet18,inception_v3,efficientnet_lite0,
                                        mobilenet_v2,grouped_dilated] [--precision fp32,bf16,fp16]
                                       [--configs all|first] [--targets sm_90,sm_80]
                                       [--workers 2] [--json benchmarks/compile_check.json]
                                       [--triton-path DIR]

``--triton-path DIR`` runs the check with the Triton installed in ``DIR`` (e.g. the GPU image's
3.6: ``pip install --no-deps --target DIR triton==3.6.0``) in a child process. The command
exits non-zero when any specialization fails to compile, spills, needs more shared memory than
the target allows, or does not use tensor cores where its precision allows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS = (
    "vgg16",
    "resnet18",
    "inception_v3",
    "efficientnet_lite0",
    "mobilenet_v2",
    "grouped_dilated",
)
SIZES = {"inception_v3": 299, "tiny": 32}
DTYPES = ("fp32", "bf16", "fp16")


def build(name: str) -> Any:
    """A benchmark model in eval mode (random weights: compiling does not read them)."""
    import torch
    import torchvision

    from krypton_ql import models

    if name == "efficientnet_lite0":
        return models.efficientnet_lite0()
    if name == "tiny":  # every kernel kind at real channel counts, for the test in make test
        return _Tiny().eval()
    if name == "grouped_dilated":  # grouped, dilated and depthwise convolutions, average pools
        nn = torch.nn
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=2, dilation=2, groups=4),
            nn.BatchNorm2d(64),
            nn.ReLU6(),
            nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
            nn.Conv2d(64, 64, 3, padding=2, dilation=2, groups=64),
            nn.Hardswish(),
            nn.Conv2d(64, 128, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, 10),
        ).eval()
    if name == "inception_v3":
        return torchvision.models.inception_v3(weights=None, aux_logits=False).eval()
    return getattr(torchvision.models, name)(weights=None).eval()


class _Tiny(torch.nn.Module):
    """Convolutions with a batch-norm epilogue, a depthwise convolution (the weighted sum),
    max and average pools, a residual add."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU6())
        self.mix = nn.Conv2d(32, 32, 3, padding=1)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        return self.head(self.avg(torch.relu(x + self.mix(self.conv(x)))))


def launches_of(name: str, precision: str, batch: int = 8) -> list[Any]:
    """The Triton launches one batch of the model's exact plan makes (patch 16, stride 8)."""
    import torch

    import krypton_ql as kql
    from runtime.kernels import aot
    from runtime.weights import Weights

    size = SIZES.get(name, 224)
    plan = kql.compile(
        build(name), (3, size, size), patch=16, stride=8, backend="torch", precision=precision,
        batch_size=batch,
    )  # fmt: skip
    image = torch.randn(1, 3, size, size, dtype=plan.dtype or torch.float32)
    weights = Weights(plan.exported.tensors)
    return aot.captured_launches(
        plan.physical, weights, plan.optimized.origins, plan.positions, image, batch
    )


_JOBS: list[tuple[Any, dict[str, Any], Any, str]] = []  # inherited by forked workers


def _compile(index: int) -> dict[str, Any]:
    from runtime.kernels import aot

    launch, flags, config, target = _JOBS[index]
    chosen = next(t for t in aot.TARGETS if t.name == target)
    return aot.compile_for(launch, flags, config, chosen).as_dict()


def check(models: list[str], precisions: list[str], configs: str, targets: list[str],
          workers: int) -> dict[str, Any]:  # fmt: skip
    """Collect, specialize and compile; the result is JSON-ready."""
    import triton

    from runtime.kernels import aot

    started = time.perf_counter()
    variants: dict[Any, Any] = {}
    uses: dict[Any, set[str]] = {}
    for name in models:
        for precision in precisions:
            for variant in aot.specializations(launches_of(name, precision), configs):
                known = variants.setdefault(variant.key, variant)
                if known is not variant:
                    known.count += variant.count
                uses.setdefault(variant.key, set()).add(name)
    _JOBS[:] = [(v.launch, v.flags, v.config, t) for v in variants.values() for t in targets]
    keys = [v.key for v in variants.values() for _ in targets]
    fork = multiprocessing.get_context("fork")  # launches hold closures: workers inherit them
    with ProcessPoolExecutor(max_workers=workers, mp_context=fork) as pool:
        reports = list(pool.map(_compile, range(len(_JOBS)), chunksize=2))
    for report, key in zip(reports, keys):
        report["launches"] = variants[key].count
        report["models"] = sorted(uses[key])
        report["signature"] = dict(key.signature)
    return {
        "triton": triton.__version__,
        "models": models,
        "precisions": precisions,
        "configs": configs,
        "targets": targets,
        "specializations": len(variants),
        "compiles": len(reports),
        "seconds": round(time.perf_counter() - started, 1),
        "problems": sum(bool(r["problems"]) for r in reports),
        "reports": reports,
    }


def summary(result: dict[str, Any]) -> str:
    """Per kernel × target: compiles, failures, spills, register and shared-memory maxima."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in result["reports"]:
        row = rows.setdefault(
            (r["kernel"], r["target"]),
            {"n": 0, "fail": 0, "spill": 0, "regs": 0, "smem": 0, "tc": 0, "tc_expected": 0},
        )
        row["n"] += 1
        row["fail"] += not r["ok"]
        row["spill"] += bool(r["spill_stores"] or r["spill_loads"])
        row["regs"] = max(row["regs"], r["registers"])
        row["smem"] = max(row["smem"], r["shared"])
        row["tc"] += r["tensor_cores"] and r["tensor_cores_expected"]
        row["tc_expected"] += r["tensor_cores_expected"]
    lines = [
        f"triton {result['triton']}: {result['specializations']} specializations, "
        f"{result['compiles']} compiles in {result['seconds']} s, {result['problems']} with "
        "problems",
        "",
        "| kernel | target | compiles | failed | spilling | max registers | max shared B | "
        "tensor cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (kernel, target), row in sorted(rows.items()):
        cores = f"{row['tc']}/{row['tc_expected']}" if row["tc_expected"] else "—"
        lines.append(
            f"| {kernel} | {target} | {row['n']} | {row['fail']} | {row['spill']} | "
            f"{row['regs']} | {row['smem']} | {cores} |"
        )
    for r in result["reports"]:
        if r["problems"]:
            lines.append(
                f"- {r['kernel']} {r['dtype']} {r['flags']} [{r['config']}] {r['target']}: "
                + "; ".join(r["problems"])
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--precision", default=",".join(DTYPES))
    parser.add_argument("--configs", choices=["all", "first"], default="all")
    parser.add_argument("--targets", default="sm_90,sm_80")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--triton-path", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.triton_path is not None:  # the same check under another Triton, in a child
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join([str(args.triton_path), str(ROOT)])
        rest = [a for a in (argv if argv is not None else sys.argv[1:])]
        index = rest.index("--triton-path")
        rest = rest[:index] + rest[index + 2 :]
        command = [sys.executable, "-m", "benchmarks.compile_check", *rest]
        return subprocess.run(command, env=env, cwd=ROOT).returncode
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    result = check(
        args.models.split(","),
        args.precision.split(","),
        args.configs,
        args.targets.split(","),
        args.workers,
    )
    print(summary(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
