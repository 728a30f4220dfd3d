"""Query results: DuckDB's rows as Arrow, heatmaps as tensors, the plan, and printing."""

from __future__ import annotations

import html
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from krypton_ql.dsl.errors import QueryError

_HEATMAP_FIELDS = ("kql_rank", "kql_slices", "kql_rows", "kql_cols", "kql_cells")
_SEGMENT_FIELDS = ("kql_scan", "kql_first_image", "kql_last_image", "kql_segments")


class Result:
    """The rows a statement produced. ``heatmaps`` stacks the one heatmap column, if any;
    ``arrow()``, ``df()`` and ``to_parquet()`` hand the rows to other tools (heatmaps as
    float32 arrays in ``df()`` — ``[rows, cols]`` of an image, ``[slices, rows, cols]`` of a
    volume, ``[cols]`` of a signal — as lists of cells in Arrow and Parquet)."""

    def __init__(
        self,
        table: pa.Table | None,
        plan: str,
        heatmap_error: QueryError | None = None,
        total_rows: int | None = None,
        segments: list[dict[str, Tensor] | None] | None = None,
    ) -> None:
        self._table = table if table is not None else pa.table({})
        # Rows the statement produced, of which this result holds the first len(self).
        self.total_rows = self._table.num_rows if total_rows is None else total_rows
        self._plan = plan
        self._heatmap_error = heatmap_error
        self._segments = segments or []  # per scan: image → its label image (segment scans)
        self._heatmap_columns = [i for i, f in enumerate(self._table.schema) if _is_heatmap(f.type)]
        self._grids = {
            i: self._painted(i) if _is_segment_heatmap(self._table.schema[i].type) else
            self._tensors(i)
            for i in self._heatmap_columns
        }  # fmt: skip

    @property
    def columns(self) -> list[str]:
        return list(self._table.column_names)

    @cached_property
    def rows(self) -> list[tuple[Any, ...]]:
        """Python values; a heatmap cell is a float32 tensor with one axis per spatial axis of
        its scan (NaN where no position was computed)."""
        columns = [
            self._grids[i] if i in self._grids else column.to_pylist()
            for i, column in enumerate(self._table.columns)
        ]
        return list(zip(*columns)) if columns else []

    def explain(self) -> str:
        """The plan (and pushdowns) that computed this result."""
        return self._plan

    @property
    def heatmaps(self) -> Tensor | None:
        """The heatmaps stacked (``[rows, *grid]``) when the query has exactly one heatmap
        column, else None."""
        if len(self._heatmap_columns) != 1 or not len(self):
            return None
        grids = [g for g in self._grids[self._heatmap_columns[0]] if g is not None]
        if len(grids) != len(self) or len({tuple(g.shape) for g in grids}) != 1:
            return None
        return torch.stack(grids)

    def arrow(self) -> pa.Table:
        return self._table

    def df(self) -> Any:
        """The rows as a pandas DataFrame (pandas must be installed)."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise QueryError("Result.df() needs pandas: pip install pandas") from None
        frame = self._table.to_pandas()
        for index in self._heatmap_columns:
            frame[self.columns[index]] = [
                None if g is None else g.numpy() for g in self._grids[index]
            ]
        return frame

    def to_parquet(self, path: str | Path) -> Path:
        import pyarrow.parquet as pq

        path = Path(path)
        pq.write_table(self._table, path)
        return path

    def __len__(self) -> int:
        return self._table.num_rows

    def _tensors(self, index: int) -> list[Tensor | None]:
        """One column of heatmap structs as tensors (vectorised over the column's cells)."""
        column = self._table.column(index).combine_chunks()
        ranks = column.field("kql_rank").to_pylist()  # None: the statement could not tell
        sizes = [column.field(f"kql_{axis}").to_pylist() for axis in ("slices", "rows", "cols")]
        cells = column.field("kql_cells")
        offsets = cells.offsets.to_numpy()
        flat = cells.flatten()
        coordinates = [
            flat.field(f"kql_{axis}").to_numpy(zero_copy_only=False)
            for axis in ("slice", "row", "col")
        ]
        value = flat.field("kql_value").to_numpy(zero_copy_only=False).astype(np.float32)
        out: list[Tensor | None] = []
        for i in range(len(column)):
            if not column[i].is_valid:
                out.append(None)
                continue
            part = slice(offsets[i], offsets[i + 1])
            at = [c[part].astype(np.int64) for c in coordinates]
            shape = tuple(
                size[i] if size[i] is not None else int(c.max(initial=-1)) + 1
                for size, c in zip(sizes, at)
            )
            if len(value[part]) and any(c.min() < 0 or c.max() >= n for c, n in zip(at, shape)):
                raise QueryError(
                    "heatmap(): a cell lies outside the "
                    f"{'×'.join(str(n) for n in shape[3 - (ranks[i] or 3) :])} grid of its scan"
                )
            grid = np.full(shape, np.nan, dtype=np.float32)
            flat_index = np.ravel_multi_index(tuple(at), shape) if len(value[part]) else at[0]
            if len(np.unique(flat_index)) != len(flat_index):
                raise self._heatmap_error or QueryError("heatmap() needs one row per position")
            grid.reshape(-1)[flat_index] = value[part]
            rank = ranks[i] if ranks[i] is not None else (3 if shape[0] > 1 else 2)
            out.append(torch.from_numpy(grid.reshape(shape[3 - rank :])))
        return out

    def _painted(self, index: int) -> list[Tensor | None]:
        """One column of segment heatmaps: each group's values painted on its image's label
        image (NaN on the segments the group has no row for)."""
        out: list[Tensor | None] = []
        for cell in self._table.column(index).to_pylist():
            if cell is None or cell["kql_scan"] is None:
                out.append(None)
                continue
            first, last = cell["kql_first_image"], cell["kql_last_image"]
            if first != last:
                raise QueryError(
                    "heatmap() over segments paints one image: GROUP BY image (and class) "
                    f"(a group holds {first!r} and {last!r})"
                )
            scan = int(cell["kql_scan"])
            labels = self._segments[scan] if scan < len(self._segments) else None
            if labels is None or first not in labels:
                raise QueryError(f"heatmap(): no segments of image {first!r} in this statement")
            label = labels[first]
            ids = np.asarray([p["kql_segment"] for p in cell["kql_segments"]], dtype=np.int64)
            values = np.asarray(
                [
                    np.nan if p["kql_value"] is None else p["kql_value"]
                    for p in cell["kql_segments"]
                ],
                dtype=np.float32,
            )
            if len(np.unique(ids)) != len(ids):
                raise QueryError("heatmap() over segments needs one row per segment: GROUP BY "
                                 "image (and class)")  # fmt: skip
            flat = label.reshape(-1).numpy()
            where = np.searchsorted(ids, flat).clip(max=max(len(ids) - 1, 0))
            painted = np.full(flat.shape, np.nan, dtype=np.float32)
            if len(ids):
                hit = ids[where] == flat
                painted[hit] = values[where[hit]]
            out.append(torch.from_numpy(painted.reshape(tuple(label.shape))))
        return out

    def _cells(self, limit: int = 20) -> list[list[str]]:
        return [[_cell(value) for value in row] for row in self.rows[:limit]]

    def __repr__(self) -> str:
        cells = self._cells()
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]
        line = " | ".join(c.ljust(w) for c, w in zip(self.columns, widths))
        rule = "-+-".join("-" * w for w in widths)
        body = [" | ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
        more = [f"… {len(self) - len(cells)} more rows"] if len(self) > len(cells) else []
        return "\n".join([line, rule, *body, *more, f"({len(self)} rows)"])

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
            for row in self._cells()
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _is_heatmap(kind: pa.DataType) -> bool:
    return pa.types.is_struct(kind) and _fields(kind) in (_HEATMAP_FIELDS, _SEGMENT_FIELDS)


def _is_segment_heatmap(kind: pa.DataType) -> bool:
    return pa.types.is_struct(kind) and _fields(kind) == _SEGMENT_FIELDS


def _fields(kind: pa.DataType) -> tuple[str, ...]:
    return tuple(kind.field(i).name for i in range(kind.num_fields))


def _cell(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"heatmap {'×'.join(str(d) for d in value.shape)}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
