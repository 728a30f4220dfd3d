"""Memory planning: a run counts its views and its batch buffers against what the device has
left; an allocation failure on any device halves the batch; what does not fit even one query
at a time is a ``KryptonError`` with the bytes needed and available, never the allocator's
error or a crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import krypton_ql as kql
from compiler.errors import KryptonError
from runtime import memory, reference
from tests.helpers import assert_matches_oracle, small_cnn

ROOT = Path(__file__).resolve().parents[1]
CPU_FAILURE = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"


def _failing_above(monkeypatch, size: int, error: Exception) -> list[int]:
    calls: list[int] = []
    original = reference.KERNELS[reference.KernelId.GATHER_CONV]

    def flaky(node, inputs, env):
        calls.append(len(env.batch.image))
        if len(env.batch.image) > size:
            raise error
        return original(node, inputs, env)

    monkeypatch.setitem(reference.KERNELS, reference.KernelId.GATHER_CONV, flaky)
    return calls


def test_a_cpu_allocation_failure_halves_the_batch(monkeypatch) -> None:
    calls = _failing_above(monkeypatch, 8, RuntimeError(CPU_FAILURE))
    model, image = small_cnn(), torch.randn(3, 12, 10)
    exact = kql.occlusion_heatmap(model, image, patch=3, stride=2, batch_size=30, progress=False)
    assert_matches_oracle(exact, model, image, patch=3, stride=2)
    assert calls[:2] == [30, 15] and max(calls[2:]) <= 8


@pytest.mark.parametrize("error", [RuntimeError(CPU_FAILURE), MemoryError()])
def test_when_one_query_does_not_fit_the_error_says_what_to_change(monkeypatch, error) -> None:
    _failing_above(monkeypatch, 0, error)
    with pytest.raises(memory.OutOfMemoryError, match="running one query.*smaller image"):
        kql.occlusion_heatmap(small_cnn(), torch.randn(3, 12, 10), patch=3, progress=False)


def test_other_runtime_errors_are_not_taken_for_memory(monkeypatch) -> None:
    _failing_above(monkeypatch, 0, RuntimeError("a kernel bug"))
    with pytest.raises(RuntimeError, match="a kernel bug"):
        kql.occlusion_heatmap(small_cnn(), torch.randn(3, 12, 10), patch=3, progress=False)


def test_the_batch_shrinks_to_what_the_views_leave(monkeypatch) -> None:
    plan = kql.compile(small_cnn(), (3, 12, 10), patch=3, stride=2, batch_size=40)
    per_query = plan.physical.batching.bytes_per_query
    monkeypatch.setattr(memory, "available", lambda device: 5 * per_query)
    assert memory.batch_for(plan.physical, 4, torch.device("cpu")) == 5
    image = torch.randn(3, 12, 10)
    assert_matches_oracle(plan.run(image, progress=False), plan.model, image, patch=3, stride=2)


def test_views_that_do_not_fit_are_refused_before_the_clean_forward(monkeypatch) -> None:
    plan = kql.compile(small_cnn(), (3, 12, 10), patch=3, stride=2)
    views = memory.view_bytes(plan.physical, 2, 4)
    monkeypatch.setattr(memory, "available", lambda device: views // 2)
    with pytest.raises(KryptonError, match=r"views of 2 image\(s\).*is available"):
        plan.run(torch.randn(2, 3, 12, 10), progress=False)


CHILD = textwrap.dedent(
    """
    import resource
    import torch
    from torch import nn
    import krypton_ql as kql
    from compiler.errors import KryptonError

    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    ).eval()
    plan = kql.compile(model, (3, 2048, 2048), patch=64, stride=64)
    image = torch.rand(3, 2048, 2048)
    with open("/proc/self/status") as status:
        used = next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.RLIM_INFINITY))
    try:
        plan.run(image, progress=False)
    except KryptonError as error:
        print("KryptonError:", error)
    """
)


def test_a_big_image_under_a_capped_address_space_ends_in_the_memory_error() -> None:
    """ResNet-like views at 2048² (2 GiB and more) under 1 GiB of address space left."""
    run = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "KryptonError: this run needs" in run.stdout, run.stdout + run.stderr[-2000:]
    assert "is available" in run.stdout and "Traceback" not in run.stderr
