"""The relational part of a query over the occlusion relation: WHERE, projections, GROUP BY
with aggregates (``heatmap(col)`` among them), ORDER BY and LIMIT."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sqlglot import exp

from krypton_ql.dsl.expressions import evaluate, is_aggregate, is_heatmap, literal
from krypton_ql.dsl.parse import fail

Columns = dict[str, np.ndarray]


def run_relation(
    select: exp.Select, columns: Columns, grid: tuple[int, int], text: str
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Apply the SELECT to the relation; returns output names and rows."""
    where = select.args.get("where")
    if where is not None:
        mask = evaluate(where.this, columns, text)
        if not isinstance(mask, np.ndarray) or mask.dtype != bool:
            raise fail("WHERE needs a true/false condition", where, text)
        columns = {name: values[mask] for name, values in columns.items()}
    projections = select.expressions
    names = [_output_name(p) for p in projections]
    group = select.args.get("group")
    if group is not None or any(any(is_aggregate(n) for n in p.walk()) for p in projections):
        keys = list(group.expressions) if group is not None else []
        rows = _grouped(projections, keys, columns, grid, text)
    else:
        values = [
            np.broadcast_to(evaluate(_unalias(p), columns, text), (len(columns["row"]),))
            for p in projections
        ]
        rows = [tuple(_python(v[i]) for v in values) for i in range(len(columns["row"]))]
    rows = _ordered(select, names, rows, text)
    limit = select.args.get("limit")
    if limit is not None:
        count = literal(limit.expression, text)
        if not isinstance(count, int) or count < 0:
            raise fail("LIMIT takes a non-negative integer", limit, text)
        rows = rows[:count]
    return names, rows


def _unalias(node: exp.Expression) -> exp.Expression:
    return node.this if isinstance(node, exp.Alias) else node


def _output_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Alias):
        return str(node.alias)
    if isinstance(node, exp.Column):
        return str(node.name).lower()
    return node.sql(dialect="duckdb").lower()


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _grouped(
    projections: list[exp.Expression],
    keys: list[exp.Expression],
    columns: Columns,
    grid: tuple[int, int],
    text: str,
) -> list[tuple[Any, ...]]:
    key_values = [np.broadcast_to(evaluate(k, columns, text), (len(columns["row"]),)) for k in keys]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index in range(len(columns["row"])):
        groups.setdefault(tuple(_python(v[index]) for v in key_values), []).append(index)
    if not keys and not groups:
        groups[()] = []
    key_sql = [k.sql() for k in keys]
    rows = []
    for members in groups.values():
        selected = np.array(members, dtype=np.int64)
        part = {name: values[selected] for name, values in columns.items()}
        rows.append(tuple(_aggregate(_unalias(p), key_sql, part, grid, text) for p in projections))
    return rows


def _aggregate(
    node: exp.Expression, keys: list[str], part: Columns, grid: tuple[int, int], text: str
) -> Any:
    if is_heatmap(node):
        return _heatmap(node, part, grid, text)
    if isinstance(node, exp.Count):
        return len(part["row"])
    if is_aggregate(node):
        values = np.asarray(evaluate(node.this, part, text), dtype=float)
        if values.size == 0:
            return None
        reduce = {exp.Sum: np.sum, exp.Avg: np.mean, exp.Min: np.min, exp.Max: np.max}
        return float(reduce[type(node)](values))
    if node.sql() in keys:
        value = evaluate(node, part, text)
        return _python(value[0]) if isinstance(value, np.ndarray) and value.size else value
    if any(is_aggregate(n) for n in node.walk()):
        raise fail(f"{node.sql()}: combine aggregates in separate columns", node, text)
    raise fail(f"{node.sql()} must appear in GROUP BY or inside an aggregate", node, text)


def _heatmap(node: exp.Anonymous, part: Columns, grid: tuple[int, int], text: str) -> torch.Tensor:
    """The group's values on the position grid; positions the group lacks are NaN."""
    if len(node.expressions) != 1:
        raise fail("heatmap() takes one column", node, text)
    values = np.asarray(evaluate(node.expressions[0], part, text), dtype=float)
    cells = part["row"] * grid[1] + part["col"]
    if len(np.unique(cells)) != len(cells):
        raise fail("heatmap() needs one row per position: GROUP BY image (and class)", node, text)
    result = torch.full(grid, float("nan"), dtype=torch.float64)
    result.view(-1)[torch.as_tensor(cells, dtype=torch.int64)] = torch.as_tensor(values)
    return result


def _ordered(
    select: exp.Select, names: list[str], rows: list[tuple[Any, ...]], text: str
) -> list[tuple[Any, ...]]:
    order = select.args.get("order")
    if order is None:
        return rows
    for ordered in reversed(order.expressions):
        target = ordered.this
        name = _output_name(target)
        if name not in names:
            raise fail(
                f"ORDER BY {target.sql()}: order by an output column or its alias", target, text
            )
        index = names.index(name)
        if any(isinstance(row[index], torch.Tensor) for row in rows):
            raise fail("cannot order by a heatmap", target, text)
        descending = bool(ordered.args.get("desc"))
        rows = sorted(rows, key=lambda row: _sort_key(row[index]), reverse=descending)
    return rows


def _sort_key(value: Any) -> tuple[int, Any]:
    return (1, 0) if value is None else (0, value)
