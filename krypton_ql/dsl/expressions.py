"""Evaluation of scalar SQL expressions over columns held as numpy arrays."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from sqlglot import exp

from krypton_ql.dsl.errors import QueryError
from krypton_ql.dsl.parse import fail

Columns = Mapping[str, np.ndarray]

BINARY: dict[type[exp.Expression], Callable[[Any, Any], Any]] = {
    exp.Add: operator.add,
    exp.Sub: operator.sub,
    exp.Mul: operator.mul,
    exp.Div: operator.truediv,
    exp.Mod: operator.mod,
    exp.EQ: operator.eq,
    exp.NEQ: operator.ne,
    exp.GT: operator.gt,
    exp.GTE: operator.ge,
    exp.LT: operator.lt,
    exp.LTE: operator.le,
    exp.And: np.logical_and,
    exp.Or: np.logical_or,
}
FUNCTIONS: dict[type[exp.Expression], Callable[[Any], Any]] = {
    exp.Abs: np.abs,
    exp.Sqrt: np.sqrt,
    exp.Exp: np.exp,
    exp.Ln: np.log,
}
AGGREGATES = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)


def is_aggregate(node: exp.Expression) -> bool:
    return isinstance(node, AGGREGATES) or is_heatmap(node)


def is_heatmap(node: exp.Expression) -> bool:
    return isinstance(node, exp.Anonymous) and str(node.name).lower() == "heatmap"


def column_name(node: exp.Column) -> str:
    return str(node.name).lower()


def literal(node: exp.Expression, text: str) -> Any:
    """A constant: number, string, boolean, or a negated number."""
    if isinstance(node, exp.Neg):
        value = literal(node.this, text)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return str(node.this)
        number = str(node.this)
        try:
            return int(number) if number.lstrip("-").isdigit() else float(number)
        except ValueError:
            raise fail(f"not a number: {number}", node, text) from None
    raise fail(f"expected a constant, got {node.sql()}", node, text)


def evaluate(node: exp.Expression, columns: Columns, text: str) -> Any:
    """The value of ``node`` for every row (numpy arrays broadcast with scalars)."""
    if isinstance(node, exp.Column):
        name = column_name(node)
        if name not in columns:
            known = ", ".join(sorted(columns))
            raise fail(f"unknown column '{name}' (columns: {known})", node, text)
        return columns[name]
    if isinstance(node, (exp.Literal, exp.Boolean)):
        return literal(node, text)
    if isinstance(node, exp.Paren):
        return evaluate(node.this, columns, text)
    if isinstance(node, exp.Neg):
        return -_number(evaluate(node.this, columns, text), node, text)
    if isinstance(node, exp.Not):
        return np.logical_not(evaluate(node.this, columns, text))
    if isinstance(node, exp.Between):
        value = evaluate(node.this, columns, text)
        low, high = (
            evaluate(node.args["low"], columns, text),
            evaluate(node.args["high"], columns, text),
        )
        return _compare(lambda: (value >= low) & (value <= high), node, text)
    if isinstance(node, exp.In):
        value = evaluate(node.this, columns, text)
        if node.args.get("query") is not None or not node.expressions:
            raise fail("IN takes a list of constants", node, text)
        options = [literal(e, text) for e in node.expressions]
        return np.isin(value, np.array(options, dtype=object if _strings(options) else None))
    if type(node) in BINARY:
        left, right = evaluate(node.this, columns, text), evaluate(node.expression, columns, text)
        return _compare(lambda: BINARY[type(node)](left, right), node, text)
    if type(node) in FUNCTIONS:
        return FUNCTIONS[type(node)](_number(evaluate(node.this, columns, text), node, text))
    if is_aggregate(node):
        raise fail(f"aggregate {node.sql()} is not allowed here", node, text)
    if isinstance(node, exp.Anonymous):
        raise fail(
            f"unknown function '{node.name}' (functions: abs, sqrt, exp, ln, count, sum, "
            "avg, min, max, heatmap)",
            node,
            text,
        )
    raise fail(f"unsupported expression {node.sql()}", node, text)


def _strings(values: list[Any]) -> bool:
    return any(isinstance(v, str) for v in values)


def _number(value: Any, node: exp.Expression, text: str) -> Any:
    if isinstance(value, str) or (isinstance(value, np.ndarray) and value.dtype == object):
        raise fail(f"{node.sql()} needs numbers", node, text)
    return value


def _compare(compute: Callable[[], Any], node: exp.Expression, text: str) -> Any:
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            return compute()
    except (TypeError, ValueError) as error:
        raise fail(f"cannot evaluate {node.sql()}: {error}", node, text) from None


def conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    """``a AND b AND c`` as ``[a, b, c]``."""
    if node is None:
        return []
    if isinstance(node, exp.And):
        return conjuncts(node.this) + conjuncts(node.expression)
    if isinstance(node, exp.Paren):
        return conjuncts(node.this)
    return [node]


def referenced(node: exp.Expression) -> set[str]:
    return {column_name(c) for c in node.find_all(exp.Column)}


__all__ = [
    "AGGREGATES",
    "QueryError",
    "conjuncts",
    "evaluate",
    "is_aggregate",
    "is_heatmap",
    "literal",
    "referenced",
]
