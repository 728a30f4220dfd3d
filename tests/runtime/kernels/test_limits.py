"""Indexing that cannot overflow and launches a GPU will accept, checked before anything runs:
the batch cap that keeps batch buffers within the kernels' 32-bit offsets (worst case at
1024×1024), 64-bit image and query bases in every kernel (above 2³¹ values, in the
interpreter, which has the compiled kernels' integer widths), and CUDA's grid limits checked
on the physical plan at compile time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torchvision
from torch import nn

import krypton_ql as kql
from compiler.errors import KryptonError
from compiler.ir import State
from runtime.kernels import limits

ROOT = Path(__file__).resolve().parents[3]


def test_image_and_query_bases_above_2_31_values_are_64_bit_in_every_kernel() -> None:
    command = [sys.executable, "-m", "tests.runtime.kernels.wide_offsets"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert run.stdout.count(" ok") == 5, run.stdout


def test_the_batch_is_capped_so_no_batch_buffer_outgrows_32_bit_offsets() -> None:
    """The worst case the planner makes at 1024×1024: a 512×512 patch (each query's boxes are
    most of every map) at stride 8 (4,225 queries) under an unbounded budget."""
    plan = kql.compile(
        torchvision.models.resnet18(weights=None).eval(), (3, 1024, 1024),
        patch=512, stride=8, memory_budget=10**15, backend="torch",
    )  # fmt: skip
    batching = plan.physical.batching
    largest = 0
    for node in plan.optimized.plan:  # one query's values per buffer, counted here again
        update = node.update
        if update is not None and update.state is not State.CLEAN and update.box is not None:
            largest = max(largest, node.schema.shape[0] * update.box.h * update.box.w)
    assert batching.capped
    assert batching.batch_size * largest <= 2**30
    by_budget = min(batching.queries, batching.budget // batching.bytes_per_query)
    assert by_budget * largest >= 2**31  # without the cap, 32-bit offsets would wrap
    assert limits.problems(plan.physical, cuda=True) == []
    assert "batch capped" in plan.explain()


def _grouped(groups: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 2 * groups, 1),
        nn.Conv2d(2 * groups, groups, 1, groups=groups),  # two input channels per group
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(groups, 2),
    ).eval()


def test_a_grid_a_gpu_would_refuse_fails_when_the_plan_is_compiled() -> None:
    """70,000 groups: the GEMM kernel's grid z would be 70,000 > 65,535."""
    plan = kql.compile(_grouped(70_000), (3, 4, 4), patch=2, stride=2, backend="torch")
    found = limits.problems(plan.physical, cuda=True)
    assert found and all("z = 70,000 > 65,535" in problem for problem in found)
    assert limits.problems(plan.physical, cuda=False) == []  # the interpreter has no grid
    with pytest.raises(KryptonError, match="grid of z = 70,000 > 65,535"):
        limits.check(plan.physical, cuda=True)
    fits = kql.compile(_grouped(600), (3, 4, 4), patch=2, stride=2, backend="torch")
    assert limits.problems(fits.physical, cuda=True) == []


def test_compiling_for_the_triton_backend_runs_the_check(monkeypatch) -> None:
    """The Triton backend refuses, at compile time, a plan whose buffers its offsets cannot
    reach (the bound lowered so that a small model exceeds it)."""
    monkeypatch.setattr(limits, "MAX_ELEMENTS", 100)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 64, 2))
    with pytest.raises(KryptonError, match="32-bit offsets"):
        kql.compile(model.eval(), (3, 8, 8), patch=2, stride=2, backend="triton")
    kql.compile(model.eval(), (3, 8, 8), patch=2, stride=2, backend="torch")  # torch: no check
