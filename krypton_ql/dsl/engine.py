"""The session's DuckDB: it runs everything after the occlusion scan.

A statement reaches DuckDB as the user's own text with edits (each ``occlusion(…)`` call
replaced by the name of its registered relation, each ``heatmap(v)`` by the aggregate that
builds the grid). ``Rewrite`` records the edits, so that a position DuckDB reports in the edited
text maps back to the user's text; ``Engine.run`` turns every ``duckdb.Error`` into a
``QueryError`` with that position (or DuckDB's message alone where it gives none).

``Engine.sandbox()`` readies a connection for statements from someone else (``kql serve``'s
SQL box): DuckDB loses file and network access and extension loading, its configuration is
locked, and a statement must be one query (``SELECT``/``WITH``/``VALUES``/``DESCRIBE``/
``SHOW``/``SUMMARIZE``, or ``EXPLAIN`` of one); ``interrupt()`` stops the running statement
from another thread.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from krypton_ql.dsl.bind import Bound
from krypton_ql.dsl.errors import QueryError
from krypton_ql.dsl.parse import Statement, fail

# heatmap(v) becomes kql_heatmap(slice, row, col, v, rank, slices, rows, cols): one struct per
# group with the grid's number of axes and its size along each (NULL where the statement cannot
# tell them) and the group's cells, in row-major order.
HEATMAP = "kql_heatmap"
# Over a segment scan, heatmap(v) becomes kql_segment_heatmap(image, segment, v, scan): the
# group's (segment, value) pairs, which the result paints on the scan's label image.
SEGMENT_HEATMAP = "kql_segment_heatmap"
_MACROS = (
    f"CREATE OR REPLACE TEMP MACRO {HEATMAP}(s, r, c, v, nd, ns, nr, nc) AS struct_pack("
    "kql_rank := any_value(nd), kql_slices := any_value(ns), kql_rows := any_value(nr), "
    "kql_cols := any_value(nc), kql_cells := list(struct_pack(kql_slice := s, kql_row := r, "
    "kql_col := c, kql_value := CAST(v AS FLOAT)) ORDER BY s, r, c))",
    f"CREATE OR REPLACE TEMP MACRO {SEGMENT_HEATMAP}(i, g, v, k) AS struct_pack("
    "kql_scan := any_value(k), kql_first_image := min(i), kql_last_image := max(i), "
    "kql_segments := list(struct_pack(kql_segment := g, kql_value := CAST(v AS FLOAT)) "
    "ORDER BY g))",
)
# What a sandboxed connection runs: queries (DESCRIBE, SHOW, SUMMARIZE, VALUES and FROM-first
# statements are SELECTs to DuckDB) and EXPLAIN; EXPLAIN ANALYZE is refused, as it runs them.
QUERY_TYPES = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)
_ANALYZE = re.compile(r"\s*EXPLAIN\s+ANALY[SZ]E\b", re.IGNORECASE)
_KIND = re.compile(r"^((?:\w+ )+Error): ", re.DOTALL)
_NAMED = re.compile(r"with name \"?([\w.]+)\"? does not exist")


@dataclass
class Rewrite:
    """The user's text with replaced spans, and the map from edited offsets back to it.

    >>> r = Rewrite("SELECT a FROM f(x) WHERE b")
    >>> r.replace(14, 18, "t1")
    >>> r.text
    'SELECT a FROM t1 WHERE b'
    >>> r.original(23), r.original(15)
    (25, 14)
    """

    source: str
    _edits: list[tuple[int, int, str]] = field(default_factory=list)

    def replace(self, start: int, end: int, new: str) -> None:
        if any(s < end and start < e for s, e, _ in self._edits):
            raise ValueError("overlapping edits")
        self._edits.append((start, end, new))

    @property
    def text(self) -> str:
        out, at = [], 0
        for start, end, new in sorted(self._edits):
            out += [self.source[at:start], new]
            at = end
        return "".join(out) + self.source[at:]

    def original(self, offset: int) -> int:
        """The offset in the user's text of an offset in the edited text (a position inside
        a replacement maps to the start of the span it replaced)."""
        shift = 0
        for start, end, new in sorted(self._edits):
            edited_start = start + shift
            if offset < edited_start:
                break
            if offset < edited_start + len(new):
                return start
            shift += len(new) - (end - start)
        return offset - shift


class Engine:
    """One DuckDB connection (in memory, or a database file) with the heatmap aggregate."""

    def __init__(self, database: str | Path | None = None):
        target = ":memory:" if database is None else str(database)
        try:
            self.connection = duckdb.connect(target)
        except duckdb.Error as error:
            raise QueryError(f"cannot open the database {target}: {_message(error)}") from None
        self.database = target
        for macro in _MACROS:
            self.connection.execute(macro)
        self.connection.execute("SET errors_as_json = true")
        # SQL's arithmetic, not IEEE's: x / 0 is an error (as x % 0 already is), never ±inf
        self.connection.execute("SET ieee_floating_point_ops = false")
        self.sandboxed = False
        self._running = threading.Lock()  # guards _active: interrupt only a running statement
        self._active = False

    def sandbox(self) -> None:
        """From now on: no file system, network or extension access (what is already open —
        a database file, registered tables — stays readable), configuration locked, and only
        queries run (``check``). There is no way back."""
        for setting in (
            "autoinstall_known_extensions = false",
            "autoload_known_extensions = false",
            "enable_external_access = false",
            "lock_configuration = true",
        ):
            self.connection.execute(f"SET {setting}")
        self.sandboxed = True

    def check(self, text: str) -> None:
        """A sandboxed connection refuses anything but one query, before it runs."""
        if not self.sandboxed:
            return
        try:
            statements = duckdb.extract_statements(text)
        except duckdb.Error:
            return  # a syntax error: running it reports it, with its position
        if len(statements) > 1:
            raise QueryError("this session runs one statement at a time")
        for statement in statements:
            if statement.type not in QUERY_TYPES or _ANALYZE.match(text):
                kind = str(statement.type.name).replace("_", " ")
                if _ANALYZE.match(text):
                    kind = "EXPLAIN ANALYZE"
                raise QueryError(
                    f"this session only runs queries (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN): "
                    f"a {kind} statement could write, attach, install, load or set something, "
                    "so it is refused"
                )

    def interrupt(self) -> None:
        """Stop the statement ``run`` is running (from any thread). Nothing else is interrupted
        (registering relations, our own queries), and without a statement running it does
        nothing: ``run``'s ``cancel`` says whether one may start."""
        with self._running:
            if self._active:
                self.connection.interrupt()

    def register(self, name: str, table: pa.Table) -> None:
        self.connection.register(name, table)

    def unregister(self, name: str) -> None:
        self.connection.unregister(name)

    def run(
        self,
        rewrite: Rewrite,
        *,
        explain_only: bool = False,
        max_rows: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Rows:
        """Run the edited statement; its rows as Arrow (None for a statement without rows).
        ``explain_only`` binds and plans it without running it (errors surface all the same).
        ``max_rows``: keep only the first rows (the others are counted, never converted).
        ``cancel``: once set, the statement does not start (and ``interrupt`` stops it)."""
        prefix = "EXPLAIN " if explain_only else ""
        self.check(prefix + rewrite.text)
        with self._running:
            if cancel is not None and cancel.is_set():
                raise QueryError("INTERRUPT Error: the statement was stopped")
            self._active = True
        try:
            relation = self.connection.sql(prefix + rewrite.text)
            if relation is None:
                return Rows(None, 0)
            if max_rows is None:
                table = relation.to_arrow_table()
                return Rows(table, table.num_rows)
            return _first_rows(relation, max_rows)
        except duckdb.Error as error:
            raise self.error(error, rewrite, len(prefix)) from None
        finally:
            with self._running:
                self._active = False

    def query(self, sql: str, parameters: list[Any] | None = None) -> pa.Table:
        """Our own SQL (pushdown evaluation, catalog listings): rows as Arrow."""
        try:
            return self.connection.sql(sql, params=parameters or None).to_arrow_table()
        except duckdb.Error as error:
            raise QueryError(_message(error)) from None

    @staticmethod
    def error(error: duckdb.Error, rewrite: Rewrite, prefix: int = 0) -> QueryError:
        """A ``QueryError`` at the position DuckDB reports, mapped back to the user's text."""
        details = _details(error)
        message = _message(error, details)
        start, length = _location(details)
        if start is None:
            named = _NAMED.search(message)
            word = named and re.search(rf"\b{re.escape(named.group(1))}\b", rewrite.source, re.I)
            if not word:
                return QueryError(message)
            return QueryError(message, rewrite.source, word.start(), word.end())
        begin = rewrite.original(max(0, start - prefix))
        return QueryError(message, rewrite.source, begin, begin + max(1, length))


@dataclass(frozen=True)
class Rows:
    """A statement's rows (None: it returns none) and how many it had in all."""

    table: pa.Table | None
    total: int


def _first_rows(relation: duckdb.DuckDBPyRelation, limit: int) -> Rows:
    """The first ``limit`` rows as Arrow; the rest streamed in batches and only counted."""
    reader = relation.to_arrow_reader(1 << 17)  # Arrow batches: counting them costs little
    kept: list[pa.RecordBatch] = []
    held = total = 0
    for batch in reader:
        total += batch.num_rows
        if held < limit:
            kept.append(batch.slice(0, limit - held))
            held += kept[-1].num_rows
    return Rows(pa.Table.from_batches(kept, schema=reader.schema), total)


def _details(error: duckdb.Error) -> dict[str, Any]:
    text = str(error)
    body = _KIND.sub("", text, count=1)
    try:
        details = json.loads(body)
    except ValueError:
        return {"exception_message": text}
    return details if isinstance(details, dict) else {"exception_message": text}


def _message(error: duckdb.Error, details: dict[str, Any] | None = None) -> str:
    details = _details(error) if details is None else details
    kind = _KIND.match(str(error))
    message = str(details.get("exception_message", error)).strip()
    message = message.split("\n\tCandidate functions:")[0]  # DuckDB lists every overload
    if kind and not message.startswith(kind.group(1)):
        message = f"{kind.group(1)}: {message}"
    return message


def _location(details: dict[str, Any]) -> tuple[int | None, int]:
    location = re.fullmatch(r"\[(\d+),(\d+)\]", str(details.get("location", "")))
    if location:
        return int(location.group(1)), int(location.group(2))
    if str(details.get("position", "")).isdigit():
        return int(details["position"]), 1
    return None, 1


def rewrite(
    statement: Statement, bound: Bound, names: list[str], grids: list[tuple[int, ...] | None]
) -> Rewrite:
    """The statement as DuckDB runs it: calls replaced by relation names, heatmaps by the
    aggregate with their grid."""
    edited = Rewrite(statement.text)
    if statement.explain:
        edited.replace(0, statement.body, "")
    for scan, name in zip(bound.scans, names):
        parent = scan.call.parent
        alias = "" if parent is not None and parent.alias else " AS occlusion"
        edited.replace(*scan.span, name + alias)
    known = {g for g in grids if g is not None}
    for heatmap in bound.heatmaps:
        index = heatmap.scan
        if index is None and len(bound.scans) == 1:
            index = 0
        if index is not None and bound.scans[index].segmented:
            _segment_heatmap(edited, statement, heatmap, index)
            continue
        grid = grids[heatmap.scan] if heatmap.scan is not None else None
        if grid is None and len(known) == 1:
            grid = next(iter(known))
        prefix = f"{heatmap.qualifier}." if heatmap.qualifier else ""
        start, end = heatmap.span
        open_paren = statement.text.index("(", start)
        sizes = "NULL, NULL, NULL, NULL"
        if grid:
            padded = (1,) * (3 - len(grid)) + tuple(grid)
            sizes = ", ".join(str(n) for n in (len(grid), *padded))
        columns = "".join(f"{prefix}{name}, " for name in ("slice", "row", "col"))
        try:
            edited.replace(start, open_paren + 1, f"{HEATMAP}({columns}")
            edited.replace(end - 1, end, f", {sizes})")
        except ValueError:
            raise fail(
                "heatmap() cannot hold this expression", heatmap.node, statement.text
            ) from None
    return edited


def _segment_heatmap(edited: Rewrite, statement: Statement, heatmap: Any, scan: int) -> None:
    """``heatmap(v)`` over a segment scan: the group's segments and values, painted later."""
    prefix = f"{heatmap.qualifier}." if heatmap.qualifier else ""
    start, end = heatmap.span
    open_paren = statement.text.index("(", start)
    try:
        edited.replace(start, open_paren + 1, f"{SEGMENT_HEATMAP}({prefix}image, {prefix}segment, ")
        edited.replace(end - 1, end, f", {scan})")
    except ValueError:
        raise fail("heatmap() cannot hold this expression", heatmap.node, statement.text) from None


def heatmap_error(statement: Statement, bound: Bound) -> QueryError:
    """The error a heatmap with two rows for one cell raises, at the first heatmap call."""
    node = bound.heatmaps[0].node if bound.heatmaps else statement.tree
    assert node is not None
    return fail(
        "heatmap() needs one row per position: GROUP BY image (and class)", node, statement.text
    )
