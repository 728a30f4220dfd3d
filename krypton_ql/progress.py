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
        progress = sys.stderr.isatty()
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
