"""Progress reporting for long runs: a tqdm bar, a caller's callback, or nothing."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

Report = Callable[[int, int], None]


@contextmanager
def progress_callback(progress: Any, total: int, label: str) -> Iterator[Report | None]:
    """Yield a ``(done, total)`` callback: ``True`` shows a tqdm bar on stderr, ``"auto"`` shows
    one when stderr is a terminal, a callable is used as is, ``False`` reports nothing."""
    if progress == "auto":
        progress = _stderr_open() and sys.stderr.isatty()
    elif progress is True and not _stderr_open():
        progress = False  # nowhere to draw a bar (stderr closed): run without one
    if callable(progress):
        yield progress
        return
    if not progress:
        yield None
        return
    bar = tqdm(total=total, desc=label, unit="query")

    def report(done: int, _total: int) -> None:
        bar.update(done - bar.n)

    try:
        yield report
    finally:
        bar.close()


def _stderr_open() -> bool:
    stream = sys.stderr
    if stream is None or getattr(stream, "closed", False):
        return False
    try:
        stream.fileno()
        return True
    except (OSError, ValueError, AttributeError):
        return False
