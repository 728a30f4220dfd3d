"""Every example runs (on its fast defaults) and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    assert "unknown column 'dorp'" in output and "^" in output


def test_quickstart(tmp_path) -> None:
    output = _run("quickstart.py", "--patch", "56", "--stride", "56", "--out", str(tmp_path))
    assert "chelsea:" in output and "theoretical speedup" in output
    assert (tmp_path / "chelsea.png").stat().st_size > 10_000
