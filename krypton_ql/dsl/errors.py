"""Query errors that point at the mistake: line, column and a caret excerpt."""

from __future__ import annotations

from compiler.errors import KryptonError


class QueryError(KryptonError):
    """A query that cannot run, with the position of the offending text.

    >>> error = QueryError("unknown column 'z'", "SELECT z\\nFROM t", 7, 8)
    >>> error.line, error.col
    (1, 8)
    >>> print(error)
    unknown column 'z' (line 1, column 8)
      SELECT z
             ^
    """

    def __init__(self, message: str, text: str = "", start: int = 0, end: int | None = None):
        self.message = message
        self.text = text
        start = max(0, min(start, len(text)))
        end = start + 1 if end is None or end <= start else end
        self.line = text.count("\n", 0, start) + 1
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", start)
        line_end = len(text) if line_end == -1 else line_end
        self.col = start - line_start + 1
        width = max(1, min(end, line_end) - start)
        source = text[line_start:line_end]
        self.excerpt = f"  {source}\n  {' ' * (self.col - 1)}{'^' * width}" if text else ""
        super().__init__(str(self))

    def __str__(self) -> str:
        if not self.text:
            return self.message
        return f"{self.message} (line {self.line}, column {self.col})\n{self.excerpt}"
