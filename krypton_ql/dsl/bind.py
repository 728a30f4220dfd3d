"""Binding: every ``occlusion(images, model, name => value, …)`` table function of a statement,
the WHERE predicates that can be pushed into it (positions, classes, images), and the
``heatmap(v)`` aggregates with the grid each one fills.

Pushdown is semantics-preserving: a conjunct of the WHERE clause of the SELECT whose FROM holds
the call is pushed when every column it reads is the call's (qualified by its alias, or
unqualified when the call is that SELECT's only source), the SELECT has no outer join, and the
conjunct has no subquery, aggregate, window or volatile function. DuckDB still applies the whole
WHERE clause to the computed relation; a pushed predicate only decides which positions, classes
and images are computed. Classes are the exception that makes pushdown part of the meaning:
a WHERE clause that reads ``class`` or ``label`` chooses the classes the relation holds —
without one, each image's predicted class (or the ``target`` option). Which classes follows
from the whole clause by logic, so that equivalent clauses give the same relation
(``class = 1 OR class = 2``, ``class IN (1, 2)``, ``NOT (class <> 1 AND class <> 2)``): each
conjunct that reads only ``class``/``label`` is evaluated over every class; one that also reads
other columns of the scan bounds the classes with those columns' conditions unknown (SQL's
NULL: a class is kept unless the conjunct is false for it whatever the rest is); one that reads
anything else cannot bound them, and every class is scanned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from compiler.errors import InvalidInputError
from krypton_ql import options
from krypton_ql.dsl.errors import QueryError
from krypton_ql.dsl.parse import Statement, calls, fail, position

COLUMNS = ("image", "row", "col", "y", "x", "slice", "z", "class", "label", "prob", "base_prob",
           "drop", "ssim_estimate")  # fmt: skip
POSITION_COLUMNS = frozenset({"row", "col", "y", "x", "slice", "z"})
# A segment scan's columns (segments => …): one row per image × class × segment.
SEGMENT_POSITION = frozenset({"segment", "area", "z", "y", "x", "depth", "height", "width"})
SEGMENT_COLUMNS = ("image", "segment", "area", "z", "y", "x", "depth", "height", "width",
                   "class", "label", "prob", "base_prob", "drop")  # fmt: skip
CLASS_COLUMNS = frozenset({"class", "label"})
APPROXIMATE = options.APPROXIMATE
OPTIONS = frozenset(
    {
        "patch",
        "stride",
        "color",
        "target",
        "score",
        "batch_size",
        "backend",
        "conv",
        "precision",
        "drilldown_mode",
        "region",
        "output",
        "guard",
    }
)
# Options of a segment scan: the segmentation (a scikit-image method or a registered label
# image set) and its parameters, and how segments are bucketed into plans.
SEGMENTATION = frozenset(
    {"n_segments", "compactness", "sigma", "scale", "min_size", "markers", "kernel_size",
     "max_dist", "ratio", "bucket_ratio", "max_plans"}
)  # fmt: skip
SEGMENT_OPTIONS = frozenset({"segments", "color", "target", "score", "batch_size", "backend"})
_PATCH_ONLY = (OPTIONS | APPROXIMATE) - SEGMENT_OPTIONS
_VOLATILE = {"random", "uuid", "gen_random_uuid", "setseed", "nextval", "now", "current_time"}


@dataclass
class Scan:
    """One ``occlusion(…)`` call: what it asks for, where it is, and its pushdowns."""

    images: str
    model: str
    options: dict[str, Any]
    call: exp.Anonymous
    span: tuple[int, int]  # the call's text, ``occlusion`` to its closing parenthesis
    qualifier: str  # how columns name it: its alias, else "occlusion"
    option_nodes: dict[str, exp.Expression] = field(default_factory=dict)
    position_filters: list[exp.Expression] = field(default_factory=list)
    image_filters: list[exp.Expression] = field(default_factory=list)
    class_filters: list[exp.Expression] = field(default_factory=list)  # class/label only
    class_bounds: list[exp.Expression] = field(default_factory=list)  # kept unless FALSE
    reads_class: bool = False  # some conjunct reads class or label: the classes follow from it

    @property
    def segmented(self) -> bool:
        """Whether the call ablates segments (``segments => …``) rather than sliding a patch."""
        return "segments" in self.options

    @property
    def columns(self) -> tuple[str, ...]:
        return SEGMENT_COLUMNS if self.segmented else COLUMNS


@dataclass
class Heatmap:
    """One ``heatmap(v)`` call: its span, the qualifier of the grid's ``row``/``col`` columns,
    and the scan whose grid it fills (None: the statement's only grid, if it has one)."""

    node: exp.Anonymous
    span: tuple[int, int]
    qualifier: str | None
    scan: int | None


@dataclass
class Bound:
    scans: list[Scan]
    heatmaps: list[Heatmap]


def bind(statement: Statement) -> Bound:
    """Validate every occlusion call and collect its pushdowns; find the heatmap calls."""
    text, tree, tokens = statement.text, statement.tree, statement.tokens
    assert tree is not None
    spans = [(tokens[s].start, tokens[e - 1].end + 1) for s, e in calls(tokens)]
    heatmap_spans = [(tokens[s].start, tokens[e - 1].end + 1) for s, e in calls(tokens, "heatmap")]
    if isinstance(tree, exp.Create) and str(tree.args.get("kind", "")).upper() == "VIEW":
        raise fail(
            "a view cannot hold an occlusion relation (it is computed per statement): use "
            "CREATE TABLE … AS SELECT …",
            tree,
            text,
        )
    scans = []
    for node in tree.find_all(exp.Anonymous):
        if str(node.name).lower() == "occlusion":
            scans.append(_scan(node, _span_of(node, spans, text), text))
    heatmaps = []
    for node in tree.find_all(exp.Anonymous):
        if str(node.name).lower() == "heatmap":
            heatmaps.append(_heatmap(node, _span_of(node, heatmap_spans, text), scans, text))
    return Bound(scans, heatmaps)


def _span_of(node: exp.Expression, spans: list[tuple[int, int]], text: str) -> tuple[int, int]:
    """The call's text, from its name to its closing parenthesis (found by the tokenizer)."""
    start = position(node, text)[0]
    found = [span for span in spans if span[0] == start]
    if not found:
        raise fail(f"cannot read the call of {node.name}()", node, text)
    return found[0]


def _scan(function: exp.Anonymous, span: tuple[int, int], text: str) -> Scan:
    table = function.parent
    if not isinstance(table, exp.Table):
        raise fail("occlusion() is a table function: use it in FROM or JOIN", function, text)
    arguments = list(function.expressions)
    positional = [a for a in arguments if not isinstance(a, exp.Kwarg)]
    if len(positional) != 2 or any(isinstance(a, exp.Kwarg) for a in arguments[:2]):
        raise fail(
            "occlusion() takes an image set and a model, then name => value options", function, text
        )
    scan = Scan(
        _name(arguments[0], text),
        _name(arguments[1], text),
        {},
        function,
        span,
        str(table.alias) if table.alias else "occlusion",
    )
    for argument in arguments[2:]:
        _option(argument, scan, text)
    _check_kind(scan, text)
    _push_down(scan, table, text)
    return scan


def _heatmap(node: exp.Anonymous, span: tuple[int, int], scans: list[Scan], text: str) -> Heatmap:
    if len(node.expressions) != 1:
        raise fail("heatmap() takes one column", node, text)
    qualified = [c.table for c in node.expressions[0].find_all(exp.Column) if c.table]
    qualifier = str(qualified[0]) if qualified else None
    select = node.find_ancestor(exp.Select)
    sources = _sources(select) if select is not None else []
    target = None
    for index, scan in enumerate(scans):
        table = scan.call.parent
        if any(source is table for source in sources) and (
            qualifier == scan.qualifier or (qualifier is None and len(sources) == 1)
        ):
            target = index
    return Heatmap(node, span, qualifier, target)


def _sources(select: exp.Select) -> list[exp.Expression]:
    source = select.args.get("from_") or select.args.get("from")
    joins = select.args.get("joins") or []
    return ([source.this] if source is not None else []) + [join.this for join in joins]


def _name(node: exp.Expression, text: str) -> str:
    if isinstance(node, exp.Column) and not node.table:
        return str(node.name)
    if isinstance(node, exp.Literal) and node.is_string:
        return str(node.this)
    raise fail(f"expected a name, got {node.sql()}", node, text)


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


def _option(node: exp.Expression, scan: Scan, text: str) -> None:
    if not isinstance(node, exp.Kwarg):
        raise fail("options are written name => value", node, text)
    name = str(node.this.name if hasattr(node.this, "name") else node.this).lower()
    if name in scan.options:
        raise fail(f"option '{name}' is given twice", node, text)
    if name not in OPTIONS | APPROXIMATE | SEGMENT_OPTIONS | SEGMENTATION:
        known = ", ".join(sorted(OPTIONS | APPROXIMATE | SEGMENT_OPTIONS | SEGMENTATION))
        raise fail(f"unknown option '{name}' (options: {known})", node, text)
    value = node.expression
    if isinstance(value, exp.Tuple | exp.Paren):
        items = value.expressions if isinstance(value, exp.Tuple) else [value.this]
        scan.options[name] = tuple(literal(item, text) for item in items)
    else:
        scan.options[name] = literal(value, text)
    scan.option_nodes[name] = node
    if name in APPROXIMATE:
        _check_range(name, scan.options[name], node, text)


def _check_kind(scan: Scan, text: str) -> None:
    """A call slides a patch or ablates segments, and takes only that kind's options."""
    if scan.segmented:
        for name in sorted(set(scan.options) & _PATCH_ONLY):
            raise fail(
                f"option '{name}' slides a patch: a segment scan (segments => …) takes "
                f"{', '.join(sorted(SEGMENT_OPTIONS | SEGMENTATION))}",
                scan.option_nodes[name],
                text,
            )
        if not isinstance(scan.options["segments"], str):
            raise fail(
                "segments => is a scikit-image method ('slic', 'felzenszwalb', 'quickshift', "
                "'watershed') or the name of registered segments",
                scan.option_nodes["segments"],
                text,
            )
        plans, ratio = scan.options.get("max_plans", 1), scan.options.get("bucket_ratio", 2)
        if not isinstance(plans, int) or isinstance(plans, bool) or plans < 1:
            raise fail(f"max_plans must be at least 1, got {plans!r}",
                       scan.option_nodes["max_plans"], text)  # fmt: skip
        if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not ratio > 1:
            raise fail(f"bucket_ratio must be a number > 1, got {ratio!r}",
                       scan.option_nodes["bucket_ratio"], text)  # fmt: skip
        return
    for name in sorted(set(scan.options) & SEGMENTATION):
        raise fail(
            f"option '{name}' belongs to a segment scan: add segments => 'slic' (or another "
            "segmentation)",
            scan.option_nodes[name],
            text,
        )


def _check_range(name: str, value: Any, node: exp.Expression, text: str) -> None:
    """An approximation option's domain, checked while binding (before anything runs) by the
    same validators ``kql.compile`` uses."""
    try:
        if name == "speedup":
            options.speedup_target(value)
        else:
            options.fraction(name, value)
    except InvalidInputError as error:
        raise fail(str(error), node, text) from None


def conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    """The AND-ed parts of a predicate, in order (iterative: a long chain does not recurse)."""
    found: list[exp.Expression] = []
    pending = [node] if node is not None else []
    while pending:
        current = pending.pop()
        if isinstance(current, exp.Paren):
            pending.append(current.this)
        elif isinstance(current, exp.And):
            pending.extend((current.expression, current.this))
        else:
            found.append(current)
    return found


def _push_down(scan: Scan, table: exp.Table, text: str) -> None:
    select = table.parent.parent if table.parent is not None else None
    if not isinstance(select, exp.Select) or select.args.get("where") is None:
        return
    joins = select.args.get("joins") or []
    if any(join.side or str(join.kind or "").upper() in ("ANTI", "ASOF") for join in joins):
        return  # an outer join: a filter above it does not commute with the scan
    alone = len(_sources(select)) == 1
    for predicate in conjuncts(select.args["where"].this):
        if _reads_class(predicate, scan.qualifier, alone):
            scan.reads_class = True
        columns = _own_columns(predicate, scan.qualifier, alone, scan.columns)
        if not columns:
            continue
        if columns <= (SEGMENT_POSITION if scan.segmented else POSITION_COLUMNS):
            scan.position_filters.append(predicate)  # positions, or a segment scan's segments
        elif columns == {"image"}:
            scan.image_filters.append(predicate)
        elif columns <= CLASS_COLUMNS:
            scan.class_filters.append(predicate)
        elif columns & CLASS_COLUMNS:
            scan.class_bounds.append(_class_bound(predicate))


def _reads_class(predicate: exp.Expression, qualifier: str, alone: bool) -> bool:
    """Whether the predicate reads the scan's ``class`` or ``label`` column."""
    return any(
        str(column.name).lower() in CLASS_COLUMNS
        and (str(column.table) == qualifier if column.table else alone)
        for column in predicate.find_all(exp.Column)
    )


def _class_bound(predicate: exp.Expression) -> exp.Expression:
    """The predicate with each condition on other columns replaced by NULL (unknown): for a
    class it is FALSE only if the predicate is false whatever those columns hold. Iterative, so
    long chains of ORs do not recurse."""
    bound = predicate.copy()
    pending = [bound]
    while pending:
        node = pending.pop()
        if isinstance(node, (exp.And, exp.Or, exp.Not, exp.Paren)):
            pending.extend(child for child in (node.this, node.args.get("expression")) if child)
        elif {str(c.name).lower() for c in node.find_all(exp.Column)} - CLASS_COLUMNS:
            node.replace(exp.Null())
    return bound


def _own_columns(
    predicate: exp.Expression, qualifier: str, alone: bool, known: tuple[str, ...] = COLUMNS
) -> set[str]:
    """The columns ``predicate`` reads when it reads the scan's columns only and can be
    evaluated on its own; empty otherwise."""
    if any(
        isinstance(node, (exp.Subquery, exp.Select, exp.Window, exp.AggFunc, exp.Placeholder))
        or (isinstance(node, exp.Func) and _function_name(node) in _VOLATILE)
        for node in predicate.walk()
    ):
        return set()
    names = set()
    for column in predicate.find_all(exp.Column):
        name = str(column.name).lower()
        ours = str(column.table) == qualifier if column.table else alone
        if not ours or name not in known:
            return set()
        names.add(name)
    return names


def _function_name(node: exp.Func) -> str:
    name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
    return str(name).lower()


def unqualified(predicate: exp.Expression) -> str:
    """The predicate as DuckDB SQL over an unqualified relation with the scan's columns."""
    copy = predicate.copy()
    for column in copy.find_all(exp.Column):
        column.set("table", None)
    return copy.sql(dialect="duckdb")


__all__ = ["COLUMNS", "Bound", "Heatmap", "QueryError", "Scan", "bind", "conjuncts"]
