"""What a scan computes: the images, classes and positions its pushed-down predicates keep.

DuckDB evaluates each predicate (bind.py decides which are pushed) over a small relation with
the scan's columns — the image names, the model's classes and labels, the position grid — so
that a pushed predicate means exactly what it means in the statement. Constants spelled out in
``image = '…'`` or ``class IN (…)`` are checked first: a misspelled image or a class the model
does not have is an error, not an empty result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from sqlglot import exp

from krypton_ql.dsl.bind import Scan, literal, unqualified
from krypton_ql.dsl.engine import Engine
from krypton_ql.dsl.errors import QueryError
from krypton_ql.dsl.parse import Statement, fail


def image_names(engine: Engine, scan: Scan, statement: Statement, names: list[str]) -> list[str]:
    """The image set's names that satisfy the image predicates, in the set's order."""
    if not scan.image_filters:
        return names
    for predicate in scan.image_filters:
        for value in _constants(predicate, statement.text):
            if isinstance(value, str) and value not in names:
                raise fail(
                    f"unknown image {value!r} (images: {', '.join(names)})",
                    predicate,
                    statement.text,
                )
    chosen = _filter(
        engine,
        statement,
        scan.image_filters,
        "SELECT unnest(?) AS image, unnest(range(?)) AS kql_i",
        [names, len(names)],
    )
    return [names[i] for i in chosen]


def classes(
    engine: Engine, scan: Scan, statement: Statement, count: int, labels: Sequence[str] | None
) -> tuple[int, ...] | None:
    """The classes the relation holds: when the WHERE clause reads ``class`` or ``label``, the
    classes it can hold for (bind.py), else the ``target`` option, else None (each image's
    predicted class)."""
    for predicate in scan.class_filters:
        for value in _constants(predicate, statement.text):
            _check_class(value, count, predicate, statement, integers_only=True)
    if "target" in scan.options:
        _check_class(scan.options["target"], count, scan.option_nodes["target"], statement)
    if not scan.reads_class:
        return (scan.options["target"],) if "target" in scan.options else None
    names = [labels[c] if labels is not None and c < len(labels) else str(c) for c in range(count)]
    source = 'SELECT unnest(range(?)) AS "class", unnest(?) AS label, "class" AS kql_i'
    predicates = scan.class_filters + [_not_false(bound) for bound in scan.class_bounds]
    if not predicates:  # read, but by conditions on other tables: every class
        return tuple(range(count))
    return tuple(_filter(engine, statement, predicates, source, [count, names]))


def positions(
    engine: Engine, scan: Scan, statement: Statement, grid: dict[str, np.ndarray]
) -> np.ndarray:
    """Grid indices (ascending) that satisfy the position predicates."""
    total = len(grid["row"])
    if not scan.position_filters:
        return np.arange(total, dtype=np.int64)
    columns = {k: np.asarray(v, dtype=np.int64) for k, v in grid.items()}
    engine.register("kql_grid", pa.table({**columns, "kql_i": np.arange(total)}))
    try:
        chosen = _filter(engine, statement, scan.position_filters, "SELECT * FROM kql_grid", [])
    finally:
        engine.unregister("kql_grid")
    return np.asarray(chosen, dtype=np.int64)


def segments(
    engine: Engine, scan: Scan, statement: Statement, table: pa.Table
) -> np.ndarray | None:
    """Rows of ``table`` (one per image × segment: its ``segment``, ``area`` and bounding-box
    columns) that satisfy the segment predicates, as a boolean mask; None when there are none
    (every segment is computed)."""
    if not scan.position_filters:
        return None
    engine.register("kql_segments", table.append_column("kql_i", pa.array(
        np.arange(table.num_rows))))  # fmt: skip
    try:
        chosen = _filter(engine, statement, scan.position_filters, "SELECT * FROM kql_segments", [])
    finally:
        engine.unregister("kql_segments")
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[np.asarray(chosen, dtype=np.int64)] = True
    return mask


def _not_false(predicate: exp.Expression) -> exp.Expression:
    """``NOT ((predicate) IS FALSE)``: true or unknown."""
    return exp.Not(
        this=exp.Paren(this=exp.Is(this=exp.Paren(this=predicate), expression=exp.false()))
    )


def _filter(
    engine: Engine,
    statement: Statement,
    predicates: list[exp.Expression],
    source: str,
    parameters: list[Any],
) -> list[int]:
    """Column ``kql_i`` of ``source`` where every predicate holds (ascending); an error points
    at the predicate that raised it."""
    chosen: set[int] | None = None
    for predicate in predicates:
        sql = f"SELECT kql_i FROM ({source}) WHERE {unqualified(predicate)}"
        try:
            values = engine.query(sql, parameters).column(0).to_pylist()
        except QueryError as error:
            raise fail(error.message, predicate, statement.text) from None
        chosen = set(values) if chosen is None else chosen & set(values)
    return sorted(chosen or ())


def _constants(predicate: exp.Expression, text: str) -> list[Any]:
    """The literal constants of ``column = c`` / ``column IN (…)`` (others: none)."""
    if isinstance(predicate, exp.In):
        nodes = predicate.expressions
    elif isinstance(predicate, exp.EQ):
        nodes = [s for s in (predicate.this, predicate.expression) if not isinstance(s, exp.Column)]
    else:
        return []
    values = []
    for node in nodes:
        try:
            values.append(literal(node, text))
        except QueryError:
            continue  # an expression: DuckDB evaluates it
    return values


def _check_class(
    value: Any,
    count: int,
    node: exp.Expression,
    statement: Statement,
    *,
    integers_only: bool = False,
) -> None:
    """``value`` is one of the model's classes (with ``integers_only``, only integers are
    checked: DuckDB casts or rejects the rest)."""
    integer = isinstance(value, int) and not isinstance(value, bool)
    if integers_only and not integer:
        return
    if not integer or not 0 <= value < count:
        raise fail(f"class {value!r} is outside the model's {count} classes", node, statement.text)
