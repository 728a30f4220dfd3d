"""Every kernel kind compiles for H100/H200 (sm_90) and A100 (sm_80) without register spills,
within the target's shared memory, with tensor cores where the precision allows — checked on
this CPU machine by compiling the launches a plan really makes (``runtime.kernels.aot``).

The check runs in a child process: the test session has Triton's interpreter on, whose kernels
cannot be compiled. The full sweep over the benchmark models is ``python -m
benchmarks.compile_check`` (benchmarks/RESULTS.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _ptxas() -> bool:
    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        return False
    return (Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


@pytest.mark.skipif(not _ptxas(), reason="triton's NVIDIA backend (ptxas) is not installed")
def test_every_kernel_kind_compiles_spill_free_for_both_targets(tmp_path) -> None:
    out = tmp_path / "compile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    command = [
        sys.executable, "-m", "benchmarks.compile_check", "--models", "tiny",
        "--precision", "fp32,bf16", "--configs", "first", "--json", str(out),
    ]  # fmt: skip
    run = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.exists(), run.stderr[-3000:]
    result = json.loads(out.read_text())
    problems = [(r["kernel"], r["dtype"], r["config"], r["target"], r["problems"])
                for r in result["reports"] if r["problems"]]  # fmt: skip
    assert not problems, problems
    assert run.returncode == 0, run.stdout[-3000:]
    seen = {(r["kernel"], r["target"], r["dtype"]) for r in result["reports"]}
    for kernel in ("gather_conv2d_kernel", "gather_pool2d_kernel", "gather_combine_kernel"):
        for target in ("sm_90", "sm_80"):
            for dtype in ("fp32", "bf16"):
                assert (kernel, target, dtype) in seen
    weighted = {r["target"] for r in result["reports"] if r["flags"].get("WEIGHTED")}
    assert weighted == {"sm_90", "sm_80"}  # the depthwise convolution's weighted sum
    convs = [r for r in result["reports"] if r["kernel"] == "gather_conv2d_kernel"]
    assert all(r["tensor_cores"] for r in convs if r["tensor_cores_expected"])
    assert any(not r["tensor_cores_expected"] for r in convs)  # the exact-fp32 variant too
