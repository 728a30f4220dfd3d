"""``kql shell``: statements fed on stdin, multi-line statements, dot commands, errors that
print their caret and let the shell go on, Ctrl-C that cancels a statement."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

import krypton_ql as kql
from krypton_ql.cli import write_results
from krypton_ql.shell import Shell
from tests.helpers import small_cnn


def _display(image: torch.Tensor) -> torch.Tensor:
    return (image - image.min()) / (image.max() - image.min())


def _shell(script: str, session: kql.Session | None = None) -> tuple[int, str, str, Shell]:
    if session is None:
        torch.manual_seed(0)
        session = kql.connect()
        session.register_model("cnn", small_cnn())
        session.register_images("scans", torch.randn(2, 3, 16, 14))

    def save(result, sql: str, out: Path) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        module = session._models["cnn"].get()
        return write_results(session, module, _display, result, sql, out)[0]

    stdout, stderr = io.StringIO(), io.StringIO()
    shell = Shell(session, save, io.StringIO(script), stdout, stderr)
    return shell.run(), stdout.getvalue(), stderr.getvalue(), shell


def test_statements_span_lines_and_errors_do_not_stop_the_shell(tmp_path) -> None:
    script = (
        "SELECT image, heatmap(prob) AS h\n"
        "FROM occlusion(scans, cnn, patch => 8, stride => 8)\n"
        "GROUP BY image ORDER BY image;\n"
        "SELECT nope FROM occlusion(scans, cnn, patch => 8);\n"
        f".save heatmaps {tmp_path / 'maps'}\n"
        "SELECT 1 AS a; SELECT 2 AS b;\n"
        "CREATE TABLE t AS SELECT 3 AS c;\n"
        ".tables\n"
        ".models\n"
        ".images\n"
        ".frobnicate\n"
        "EXPLAIN SELECT y FROM occlusion(scans, cnn, patch => 8) WHERE row = 0;\n"
        "SELECT 4 AS unfinished"
    )
    status, out, err, _shell_ = _shell(script)
    assert status == 0
    assert "heatmap 2×2" in out and "(2 rows)" in out
    assert 'Referenced column "nope" not found' in err and "^^^^" in err  # caret excerpt
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "0_h.npy",
        "0_h.png",
        "1_h.npy",
        "1_h.png",
    ]
    saved = np.load(tmp_path / "maps" / "1_h.npy")
    assert saved.shape == (2, 2) and saved.dtype == np.float32
    assert "a\n-" in out and "b\n-" in out
    assert "\nt\n" in out and "cnn" in out and "scans: 0, 1" in out
    assert "unknown command '.frobnicate'" in err
    assert "positions: 7 of 63 (filters: row = 0)" in out
    assert "unfinished" in out  # the last statement runs at end of input without its ';'


def test_ctrl_c_cancels_the_running_statement_and_keeps_the_shell() -> None:
    class Interrupting:
        calls = 0

        def sql(self, text: str, progress=False):
            Interrupting.calls += 1
            if Interrupting.calls == 1:
                raise KeyboardInterrupt
            return kql.connect().sql(text)

    status, out, err, _ = _shell("SELECT 1 AS first;\nSELECT 2 AS second;\n", Interrupting())
    assert status == 0 and "cancelled" in err and "second" in out and "first" not in out


def test_help_and_quit() -> None:
    status, out, _err, _ = _shell(".help\n.quit\nSELECT 1 AS never;\n")
    assert status == 0 and ".save heatmaps DIR" in out and "never" not in out
