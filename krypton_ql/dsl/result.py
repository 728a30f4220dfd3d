"""Query results: columns, rows, heatmaps, the plan, and pretty printing."""

from __future__ import annotations

import html
from typing import Any

import torch
from torch import Tensor


class Result:
    """The rows a query produced. ``heatmaps`` stacks the one heatmap column, if any."""

    def __init__(self, columns: list[str], rows: list[tuple[Any, ...]], plan: str):
        self.columns = list(columns)
        self.rows = rows
        self._plan = plan

    def explain(self) -> str:
        """The plan (and pushdowns) that computed this result."""
        return self._plan

    @property
    def heatmaps(self) -> Tensor | None:
        """``[rows, H, W]`` when the query has exactly one heatmap column, else None."""
        indices = [
            i
            for i in range(len(self.columns))
            if self.rows and all(isinstance(row[i], Tensor) for row in self.rows)
        ]
        if len(indices) != 1:
            return None
        return torch.stack([row[indices[0]] for row in self.rows])

    def __len__(self) -> int:
        return len(self.rows)

    def _cells(self, limit: int = 20) -> list[list[str]]:
        return [[_cell(value) for value in row] for row in self.rows[:limit]]

    def __repr__(self) -> str:
        cells = self._cells()
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]
        line = " | ".join(c.ljust(w) for c, w in zip(self.columns, widths))
        rule = "-+-".join("-" * w for w in widths)
        body = [" | ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
        more = [f"… {len(self.rows) - len(cells)} more rows"] if len(self.rows) > len(cells) else []
        return "\n".join([line, rule, *body, *more, f"({len(self.rows)} rows)"])

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
            for row in self._cells()
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"heatmap {'×'.join(str(d) for d in value.shape)}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
