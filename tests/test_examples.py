"""Every example runs (on its fast defaults) and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each example runs in a subprocess on the pretrained model

ROOT = Path(__file__).parents[1]


def _run(script: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def test_query_tour() -> None:
    output = _run("query_tour.py")
    assert "coffee" in output and "967" in output  # espresso, predicted
    assert "occlusion queries ran" in output and "== pushdown ==" in output
    assert 'column "dorp" not found' in output and "^" in output
    assert "worst_error" in output and "| True" in output and "| False" in output


def test_quickstart(tmp_path) -> None:
    output = _run("quickstart.py", "--patch", "56", "--stride", "56", "--out", str(tmp_path))
    assert "chelsea:" in output and "theoretical speedup" in output
    assert (tmp_path / "chelsea.png").stat().st_size > 10_000


def test_migrating_from_captum() -> None:
    output = _run("migrating_from_captum.py", "--window", "56", "--stride", "56")
    assert "captum.attr.Occlusion" in output and "krypton_ql.captum.Occlusion" in output
    difference, scale = output.split("max |difference| ")[1].split(" (scale ")
    assert float(difference) <= 1e-5 * float(scale.rstrip(")\n"))


def test_approximation_and_tuning(tmp_path) -> None:
    output = _run("approximation_and_tuning.py", "--stride", "32", "--out", str(tmp_path))
    assert "tuned: τ =" in output and "≈" in output and "SSIM" in output
    assert (tmp_path / "astronaut.png").stat().st_size > 10_000


def test_paper_benchmark_table() -> None:
    output = _run("paper_benchmark_table.py", "--models", "vgg16", "--patches", "16",
                  "--taus", "1.0,0.5")  # fmt: skip
    lines = output.splitlines()
    assert any(line.startswith("1 ") and "6.52" in line for line in lines)
    assert any(line.startswith("0.5 ") and "9.20" in line for line in lines)
