"""``kql shell``: statements fed on stdin, multi-line statements, dot commands, errors that
print their caret and let the shell go on, Ctrl-C that cancels a statement."""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import krypton_ql as kql
from krypton_ql.apps.results import write_results
from krypton_ql.apps.shell import Shell
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
        return write_results(session, module, _display, result, session.outline(sql), out)[0]

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


@pytest.mark.slow
def test_on_a_terminal_ctrl_c_clears_the_line_and_history_is_kept(tmp_path) -> None:
    """A real pseudo-terminal: readline editing, Ctrl-C on a half-typed statement, Ctrl-D to
    leave, and the history file written for the next run."""
    root = Path(__file__).resolve().parents[2]
    history = tmp_path / "history"
    script = (
        "import os, pathlib, krypton_ql as kql\n"
        "from krypton_ql.apps.shell import Shell\n"
        "history = pathlib.Path(os.environ['KQL_HISTORY'])\n"
        "raise SystemExit(Shell(kql.connect(), lambda *a: [], history=history).run())\n"
    )
    environment = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "TERM": "dumb",
                   "KQL_HISTORY": str(history), "HOME": str(tmp_path)}  # fmt: skip
    pid, controller = pty.fork()  # the child's controlling terminal: Ctrl-C is a SIGINT
    if pid == 0:
        # A test run started in the background inherits SIGINT ignored, and Python keeps an
        # ignored SIGINT ignored: the shell would never see Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.chdir(root)
        os.execve(sys.executable, [sys.executable, "-c", script], environment)
    output = b""

    def read_until(marker: bytes, seconds: float = 120, count: int = 1) -> None:
        nonlocal output
        deadline = time.monotonic() + seconds
        while output.count(marker) < count and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    output += os.read(controller, 4096)
                except OSError:
                    return

    read_until(b"kql> ")
    os.write(controller, b"SELECT 1 AS never\n")
    read_until(b"...> ")
    # Let readline reach its wait for input: a SIGINT that lands just before it is seen only
    # with the next keystroke (CPython's readline loop), which would eat the next line.
    time.sleep(1.0)
    os.write(controller, b"\x03")
    read_until(b"kql> ", count=2)  # the shell's fresh prompt (the terminal echoes ^C at once)
    os.write(controller, b"SELECT 41 + 1 AS answer;\n")
    read_until(b"(1 rows)")
    read_until(b"kql> ", count=3)
    time.sleep(1.0)  # as for Ctrl-C: let readline reach its wait before the keystroke
    os.write(controller, b"\x04")
    read_until(b"never-appears", 10)  # until the shell exits and the terminal closes
    status = _wait(pid, 60)
    os.close(controller)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "answer" in text and "42" in text and "never\r\n-" not in text
    assert "SELECT 41 + 1 AS answer;" in history.read_text()


def _wait(pid: int, seconds: float) -> int:
    """The child's wait status; a child still running after ``seconds`` is killed (the test
    then fails on its status instead of hanging)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]
