"""``kql shell``: an interactive SQL prompt over a session.

Statements end with ``;`` and may span lines; ``.help`` lists the dot commands. Errors print
their caret excerpt and the shell goes on; Ctrl-C cancels the running statement (or the one
being typed) and keeps the shell; Ctrl-D (end of input) leaves it. On a terminal, line editing
and history come from ``readline`` (the CLI keeps history in ``$KQL_HISTORY``, default
``~/.kql_history``); fed on stdin, it reads the statements and prints the results.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from compiler.errors import KryptonError
from krypton_ql.dsl.parse import complete, split

HELP = """\
Statements are DuckDB's SQL plus occlusion(images, model, option => value, …) and heatmap(v);
end each with ';' (it may span lines). EXPLAIN [VERBOSE] shows the plan of an occlusion query.
  .help                 this text
  .models               the models queries can name
  .images               the image sets and their images
  .tables               the database's tables
  .save heatmaps DIR    write the last result's heatmaps (.npy, and .png overlays)
  .quit                 leave (or Ctrl-D)
"""


class Shell:
    """The prompt loop; ``save`` writes a result's heatmaps (the CLI's writer)."""

    def __init__(
        self,
        session: Any,
        save: Callable[[Any, str, Path], list[Path]],
        stdin: IO[str] = sys.stdin,
        stdout: IO[str] = sys.stdout,
        stderr: IO[str] = sys.stderr,
        history: Path | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.session, self.save = session, save
        self.options = options or {}  # Session.sql's keywords: the dataset-job settings
        self.history = history  # the history file of a terminal session (None: none kept)
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.interactive = stdin.isatty() and stdout.isatty()
        self.last: tuple[Any, str] | None = None  # the last result and its statement

    def run(self) -> int:
        if self.interactive:
            self._history()
            self._print("krypton-ql shell: DuckDB's SQL plus occlusion(…); .help for help")
        buffer = ""
        while True:
            try:
                line = self._read("kql> " if not buffer else "...> ")
            except KeyboardInterrupt:
                self._print("^C", error=True)
                buffer = ""
                continue
            if line is None:  # end of input
                if buffer.strip():
                    self.execute(buffer)
                return 0
            if not buffer and line.strip().startswith("."):
                if self.command(line.strip()) == "quit":
                    return 0
                continue
            buffer += line + "\n"
            if complete(buffer):
                self.execute(buffer)
                buffer = ""

    def execute(self, text: str) -> None:
        try:
            statements = split(text)
        except KryptonError as error:
            self._print(str(error), error=True)
            return
        for statement in statements:
            try:
                result = self.session.sql(statement, progress=self.interactive, **self.options)
            except KeyboardInterrupt:
                self._print("cancelled", error=True)
                return
            except KryptonError as error:
                self._print(str(error), error=True)
                return
            if result.columns == ["plan"]:
                self._print("\n".join(str(row[0]) for row in result.rows))
            elif result.columns:
                self._print(repr(result))
                self.last = (result, statement)
            else:
                self._print("ok")

    def command(self, line: str) -> str | None:
        words = line.split()
        name = words[0].lower()
        if name in (".quit", ".exit"):
            return "quit"
        if name == ".help":
            self._print(HELP.rstrip())
        elif name == ".models":
            self._print("\n".join(self.session.models()))
        elif name == ".images":
            for image_set, names in self.session.image_sets().items():
                self._print(f"{image_set}: {', '.join(names)}")
        elif name == ".tables":
            self._print("\n".join(self.session.tables()) or "(no tables)")
        elif name == ".save" and len(words) == 3 and words[1] == "heatmaps":
            if (
                self.last is None
                or self.last[0].heatmaps is None
                and not _has_heatmap(self.last[0])
            ):
                self._print("the last result has no heatmap column", error=True)
                return None
            try:
                written = self.save(self.last[0], self.last[1], Path(words[2]))
            except (KryptonError, OSError) as error:
                self._print(str(error), error=True)
                return None
            self._print(f"wrote {len(written)} files to {words[2]}/")
        else:
            self._print(f"unknown command {line!r} (.help lists them)", error=True)
        return None

    def _read(self, prompt: str) -> str | None:
        if self.interactive:
            try:
                return input(prompt)
            except EOFError:
                self._print("")
                return None
        line = self.stdin.readline()
        return None if line == "" else line.rstrip("\n")

    def _print(self, text: str, *, error: bool = False) -> None:
        stream = self.stderr if error else self.stdout
        print(text, file=stream, flush=True)

    def _history(self) -> None:
        try:
            import atexit
            import readline
        except ImportError:  # no line editing on this platform
            return
        if self.history is None:
            return
        path = self.history
        with contextlib.suppress(OSError):
            readline.read_history_file(path)
        readline.set_history_length(1000)
        atexit.register(_write_history, readline, path)


def _write_history(readline: Any, path: Path) -> None:
    with contextlib.suppress(OSError):
        readline.write_history_file(path)


def _has_heatmap(result: Any) -> bool:
    from torch import Tensor

    return any(isinstance(v, Tensor) for row in result.rows[:1] for v in row)
