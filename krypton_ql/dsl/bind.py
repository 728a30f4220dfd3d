"""Binding: the ``occlusion(images, model, name => value, …)`` table function and the WHERE
predicates that can be pushed into it (positions, classes, images)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlglot import exp

from krypton_ql.dsl.errors import QueryError
from krypton_ql.dsl.expressions import (
    FUNCTIONS,
    conjuncts,
    evaluate,
    is_aggregate,
    literal,
    referenced,
)
from krypton_ql.dsl.parse import Statement, fail

COLUMNS = ("image", "row", "col", "y", "x", "class", "label", "prob", "base_prob", "drop")
POSITION_COLUMNS = frozenset({"row", "col", "y", "x"})
APPROXIMATE = frozenset({"tau", "drilldown", "speedup", "ssim"})
OPTIONS = frozenset(
    {"patch", "stride", "color", "target", "score", "batch_size", "backend", "drilldown_mode"}
)


@dataclass
class Occlusion:
    """What the table function asks for, with the pushed-down restrictions."""

    images: str
    model: str
    options: dict[str, Any]
    option_nodes: dict[str, exp.Expression] = field(default_factory=dict)
    position_filters: list[exp.Expression] = field(default_factory=list)
    classes: list[int] | None = None
    class_nodes: list[exp.Expression] = field(default_factory=list)
    image_names: list[str] | None = None


def bind(statement: Statement) -> Occlusion:
    """Validate the FROM clause and collect the pushdowns of the WHERE clause."""
    text, select = statement.text, statement.select
    source = select.args.get("from_") or select.args.get("from")
    function = (
        source.this.this if source is not None and isinstance(source.this, exp.Table) else None
    )
    if not (isinstance(function, exp.Anonymous) and str(function.name).lower() == "occlusion"):
        node = source if source is not None else select
        raise fail("FROM must be occlusion(images, model, option => value, …)", node, text)
    arguments = list(function.expressions)
    positional = [a for a in arguments if not isinstance(a, exp.Kwarg)]
    if len(positional) != 2 or any(isinstance(a, exp.Kwarg) for a in arguments[:2]):
        raise fail(
            "occlusion() takes an image set and a model, then name => value options", function, text
        )
    occlusion = Occlusion(_name(arguments[0], text), _name(arguments[1], text), {})
    for argument in arguments[2:]:
        _option(argument, occlusion, text)
    _check_columns(select, text)
    _check_functions(select, text)
    _push_down(select.args.get("where"), occlusion, text)
    return occlusion


def _check_functions(select: exp.Select, text: str) -> None:
    """Every function a query calls is one the language has, before any query runs."""
    source = function_of(select)
    operators = (exp.Binary, exp.Connector, exp.Predicate, exp.Unary)
    for node in select.walk(prune=lambda n: n is source):
        if not isinstance(node, exp.Func) or isinstance(node, operators) or node is source:
            continue
        if is_aggregate(node) or type(node) in FUNCTIONS:
            continue
        name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
        raise fail(
            f"unknown function '{str(name).lower()}' (functions: abs, sqrt, exp, ln, "
            "count, sum, avg, min, max, heatmap)",
            node,
            text,
        )


def function_of(select: exp.Select) -> exp.Expression | None:
    """The ``occlusion(…)`` call of the FROM clause, if there is one."""
    source = select.args.get("from_") or select.args.get("from")
    table = source.this if source is not None else None
    return table.this if isinstance(table, exp.Table) else None


def _check_columns(select: exp.Select, text: str) -> None:
    """Every column a query names exists (ORDER BY may also name an output alias), before any
    occlusion query runs."""
    aliases = {str(p.alias).lower() for p in select.expressions if isinstance(p, exp.Alias)}
    for clause in ("expressions", "where", "group", "order"):
        value = select.args.get(clause)
        nodes = value if isinstance(value, list) else [value] if value is not None else []
        allowed = set(COLUMNS) | (aliases if clause == "order" else set())
        for node in nodes:
            for column in node.find_all(exp.Column):
                if column.table or str(column.name).lower() not in allowed:
                    known = ", ".join(COLUMNS)
                    raise fail(f"unknown column '{column.sql()}' (columns: {known})", column, text)


def _name(node: exp.Expression, text: str) -> str:
    if isinstance(node, exp.Column) and not node.table:
        return str(node.name)
    if isinstance(node, exp.Literal) and node.is_string:
        return str(node.this)
    raise fail(f"expected a name, got {node.sql()}", node, text)


def _option(node: exp.Expression, occlusion: Occlusion, text: str) -> None:
    if not isinstance(node, exp.Kwarg):
        raise fail("options are written name => value", node, text)
    name = str(node.this.name if hasattr(node.this, "name") else node.this).lower()
    if name in occlusion.options:
        raise fail(f"option '{name}' is given twice", node, text)
    if name not in OPTIONS and name not in APPROXIMATE:
        known = ", ".join(sorted(OPTIONS | APPROXIMATE))
        raise fail(f"unknown option '{name}' (options: {known})", node, text)
    value = node.expression
    if isinstance(value, exp.Tuple | exp.Paren):
        items = value.expressions if isinstance(value, exp.Tuple) else [value.this]
        occlusion.options[name] = tuple(literal(item, text) for item in items)
    else:
        occlusion.options[name] = literal(value, text)
    occlusion.option_nodes[name] = node
    if name in APPROXIMATE:
        _check_range(name, occlusion.options[name], node, text)


# The approximation options' domains, checked while binding (before anything runs).
RANGES = {
    "tau": (0.0, 1.0, "in (0, 1]"),
    "drilldown": (0.0, 1.0, "in (0, 1]"),
    "ssim": (0.0, 1.0, "in (0, 1]"),
    "speedup": (1.0, float("inf"), "greater than 1"),
}


def _check_range(name: str, value: Any, node: exp.Expression, text: str) -> None:
    low, high, words = RANGES[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not (low < value <= high):
        raise fail(f"{name} must be a number {words}, got {value!r}", node, text)


def _push_down(where: exp.Where | None, occlusion: Occlusion, text: str) -> None:
    for predicate in conjuncts(where.this if where is not None else None):
        columns = referenced(predicate)
        unknown = columns - set(COLUMNS)
        if unknown:
            column = next(c for c in predicate.find_all(exp.Column) if c.name.lower() in unknown)
            raise fail(
                f"unknown column '{column.name}' (columns: {', '.join(COLUMNS)})", column, text
            )
        if columns and columns <= POSITION_COLUMNS:
            occlusion.position_filters.append(predicate)
        elif columns == {"class"}:
            classes = _equalities(predicate, text)
            if classes is not None:
                if any(not isinstance(c, int) or isinstance(c, bool) for c in classes):
                    raise fail("class is compared with integers", predicate, text)
                occlusion.classes = _intersect(occlusion.classes, classes)
                occlusion.class_nodes.append(predicate)
        elif columns == {"image"}:
            names = _equalities(predicate, text)
            if names is not None:
                occlusion.image_names = _intersect(occlusion.image_names, [str(n) for n in names])


def _equalities(predicate: exp.Expression, text: str) -> list[Any] | None:
    """The constants of ``column = c`` or ``column IN (c, …)``; None for other forms."""
    if isinstance(predicate, exp.EQ):
        constant = (
            predicate.expression if isinstance(predicate.this, exp.Column) else predicate.this
        )
        return [literal(constant, text)]
    if isinstance(predicate, exp.In) and isinstance(predicate.this, exp.Column):
        return [literal(e, text) for e in predicate.expressions]
    return None


def _intersect(current: list[Any] | None, values: list[Any]) -> list[Any]:
    unique = list(dict.fromkeys(values))
    return unique if current is None else [v for v in current if v in unique]


def position_mask(occlusion: Occlusion, grid: dict[str, np.ndarray], text: str) -> np.ndarray:
    """Which positions of the grid satisfy the pushed-down position predicates."""
    mask = np.ones(len(grid["row"]), dtype=bool)
    for predicate in occlusion.position_filters:
        value = evaluate(predicate, grid, text)
        if not isinstance(value, np.ndarray) or value.dtype != bool:
            raise fail("a WHERE condition must be true or false", predicate, text)
        mask &= value
    return mask


__all__ = ["COLUMNS", "Occlusion", "QueryError", "bind", "position_mask"]
