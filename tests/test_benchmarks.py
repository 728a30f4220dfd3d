"""The benchmark harnesses run end to end (tiny settings on the CPU; the figures are not
checked here, only that every method runs and exact agrees with naive)."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu

pytestmark = pytest.mark.slow  # a benchmark harness end to end


def test_gpu_harness_runs_on_the_cpu(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    rows = gpu.main(
        "--models resnet18 --precision fp32,bf16 --methods naive,captum,torch --size 64 "
        f"--stride 16 --repeat 1 --device cpu --json {out}".split()
    )
    methods = [(row["precision"], row["method"]) for row in rows]
    assert methods == [
        (p, m) for p in ("fp32", "bf16") for m in ("naive", "captum", "exact (torch)")
    ]
    for row in rows:
        if row["method"] == "exact (torch)":
            assert row["max_abs_diff"] <= (1e-5 if row["precision"] == "fp32" else 1e-3)
            assert row["speedup"] > 0
    saved = json.loads(out.read_text())
    assert saved["meta"]["device"] == "cpu" and len(saved["results"]) == 6


def test_every_planted_mutation_still_finds_its_text() -> None:
    """A refactor that moves a mutated line must move the mutation too (else `make mutation`
    stops at it)."""
    from benchmarks.mutation import MUTATIONS, ROOT

    for mutation in MUTATIONS:
        count = (ROOT / mutation.path).read_text().count(mutation.old)
        assert count == 1, f"{mutation.name}: found {count} times in {mutation.path}"
