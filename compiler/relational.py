"""The whole incremental plan as SQL: one ``CREATE TABLE`` per rewritten node, in plan order.

Relations (node ``k`` is the k-th node of the rewritten plan; every value column is ``v``):

- ``q(q, top, left, row, col)`` — the occlusion queries, one per patch position: the batching
  rule's batch axis is the column ``q``;
- ``o<k>(q, y0, x0)`` — the per-query origin of node k's update box (the batching rule's
  origins);
- ``v<k>(c, y, x, v)`` — node k's materialized view of the clean image (a vector is
  ``(c, 0, 0)``);
- weights: ``k<k>(n, c, ky, kx, v)`` (``c`` the absolute input channel, so grouped and depthwise
  convolutions join on ``c``) and ``b<k>(n, v)`` for a convolution or a linear layer
  (``l<k>(n, c, v)``); ``s<k>(c, scale, shift)`` for batch norm; ``d<k>(y, x, v)`` for an
  average pool whose windows have different divisors; ``w<k>(c, y, x, v)`` a region
  aggregate's weights; ``c<k>(c, v)`` the occlusion colour;
- ``u<k>(q, c, y, x, v)`` — what the plan computes: node k's per-query value, on the cells
  of its box (state BOX) or of the whole map (state FULL). A clean node has none.

A consumer reads its input as ``view ⊕ patch``: ``COALESCE(u.v, v.v)`` with both joined on the
cell (``u`` alone for a full input, ``v`` alone for a clean one). Cells outside the map are
absent: zero in a sum (padding), ignored by MAX. The update forms:

- OCCLUDE: the box cells of the image, the colour where the patch covers them;
- RECOMPUTE / FULL: the operator over ``Window(view ⊕ patch)`` on the output box (the whole
  map for FULL) — ``SUM(K·A)`` grouped by output cell for a convolution, MAX or SUM/divisor for
  a pool;
- DELTA: ``view + SUM(K·(u − v))`` over the input box (linear operators), and for the global
  pool ``avg(view) + SUM(u − v)/(H·W)`` (a region aggregate: ``view + s·SUM((u − v)·w)``);
- ELEMENTWISE / BOUNDING_BOX: the map (activation, scalar, batch norm, pad, upsampling) or
  the combination (add, multiply with broadcasting, channel concatenation) of inputs, each read
  as ``view ⊕ patch`` over the output box — for BOUNDING_BOX the box that bounds the inputs'
  boxes (the merge rule);
- PROJECT: ``view ⊕ patch`` over the whole map, a full per-query value for a global operator.

Pointwise calls (layer norm, channel shuffles and slices) and ATen fallbacks have no relational
form: ``render`` names the node. ``runtime.relational`` loads the tables and runs the
statements in DuckDB; tests compare the heatmap it assembles with torch and with naive
re-inference.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.errors import UnsupportedOperationError
from compiler.ir import (
    AdaptivePool,
    BatchNorm,
    Combine,
    Concat,
    Flatten,
    GlobalAvgPool,
    JoinAggregate,
    Linear,
    Map,
    Node,
    Occlude,
    Pad,
    Pool,
    Project,
    RegionSum,
    Scalar,
    Softmax,
    State,
    Strategy,
    Upsample,
    UpsampleMode,
)
from compiler.plan import Plan
from compiler.sql import activation_sql, scalar_sql
from compiler.types import Agg


@dataclass(frozen=True)
class Statement:
    """``CREATE TABLE u<k> AS <sql>`` for one rewritten node."""

    index: int
    node: str
    form: str  # the node's update form, as explain prints it
    sql: str

    def __str__(self) -> str:
        head = f"-- #{self.index + 1} {self.node}: {self.form}"
        return f"{head}\nCREATE TABLE u{self.index} AS {self.sql};"


def render(plan: Plan) -> list[Statement]:
    """The statements of a rewritten (batched) plan, in order; an operator or update form
    without a relational form raises ``UnsupportedOperationError`` naming it."""
    nodes = list(plan)
    index = {node.name: k for k, node in enumerate(nodes)}
    statements = []
    for k, node in enumerate(nodes):
        if node.update is None:
            raise UnsupportedOperationError(f"node {node.name} has no update form: optimize first")
        if node.schema.is_spatial and node.schema.d != 2:
            raise UnsupportedOperationError(
                f"node {node.name}: the plan as SQL covers maps of rows and columns (y, x); "
                f"this one has {node.schema.d} spatial axes"
            )
        if node.state is State.CLEAN:
            continue
        sql = _Renderer(nodes, index, k).render()
        statements.append(Statement(k, node.name, str(node.update), sql))
    return statements


def render_text(plan: Plan) -> list[str]:
    """Explain's lines: the relations the statements read, then the statements."""
    try:
        statements = render(plan)
    except UnsupportedOperationError as error:
        return [f"(no relational form: {error})"]
    header = [
        "-- q(q, top, left, row, col): one row per occlusion query (the batch axis)",
        "-- v<k>(c, y, x, v): views; o<k>(q, y0, x0): box origins; k/b/l/s/d/c<k>: weights",
    ]
    return header + [line for s in statements for line in str(s).split("\n")]


class _Renderer:
    def __init__(self, nodes: list[Node], index: dict[str, int], k: int):
        self.nodes, self.index, self.k = nodes, index, k
        self.node = nodes[k]

    def render(self) -> str:
        node, op = self.node, self.node.op
        strategy = node.update.strategy if node.update else None
        if isinstance(op, Occlude):
            return self._occlude()
        if isinstance(op, Project) or strategy is Strategy.PROJECT:
            return self._project()
        if isinstance(op, JoinAggregate):
            return self._conv_delta() if strategy is Strategy.DELTA else self._conv()
        if isinstance(op, Pool):
            return self._pool()
        if isinstance(op, (Map, Scalar, BatchNorm)):
            return self._elementwise()
        if isinstance(op, Combine):
            return self._combine()
        if isinstance(op, Concat):
            return self._concat()
        if isinstance(op, Pad):
            return self._pad()
        if isinstance(op, Upsample):
            return self._upsample()
        if isinstance(op, GlobalAvgPool) or (
            isinstance(op, AdaptivePool) and op.agg is Agg.AVG and op.output.area == 1
        ):
            return self._global_pool(strategy is Strategy.DELTA)
        if isinstance(op, RegionSum):
            return self._region_sum(strategy is Strategy.DELTA)
        if isinstance(op, Flatten):
            return self._flatten()
        if isinstance(op, Linear):
            return self._linear(strategy is Strategy.DELTA)
        if isinstance(op, Softmax) and not op.log:
            return self._softmax()
        raise UnsupportedOperationError(
            f"node {node.name} ({type(op).__name__}, {node.update}) has no relational form"
        )

    # -- cells and reads ---------------------------------------------------------------------

    def _shape(self, node: Node) -> tuple[int, int, int]:
        shape = node.schema.shape
        return (shape[0], 1, 1) if len(shape) == 1 else (shape[0], shape[1], shape[2])

    def _cells(self, channels: bool, count: int | None = None) -> str:
        """``(q[, c], y, x)`` of this node's output cells (``count`` channels, default all):
        its box, or the whole map."""
        node, k = self.node, self.k
        all_channels, height, width = self._shape(node)
        count = all_channels if count is None else count
        channel = ", ch.c" if channels else ""
        channel_source = f", range({count}) ch(c)" if channels else ""
        if node.state is State.BOX:
            assert node.update is not None and node.update.box is not None
            box = node.update.box
            return (
                f"SELECT o.q{channel}, o.y0 + r.i AS y, o.x0 + s.i AS x FROM o{k} o"
                f"{channel_source}, range({box.h}) r(i), range({box.w}) s(i)"
            )
        return (
            f"SELECT qq.q{channel}, r.i AS y, s.i AS x FROM q qq{channel_source}, "
            f"range({height}) r(i), range({width}) s(i)"
        )

    def _read(self, name: str, alias: str, q: str, c: str, y: str, x: str) -> tuple[str, str]:
        """Joins and the value expression of input ``name`` read as ``view ⊕ patch`` at the
        cell ``(q, c, y, x)``."""
        i, state = self.index[name], self.nodes[self.index[name]].state
        view = (
            f" LEFT JOIN v{i} {alias}v ON {alias}v.c = {c} AND {alias}v.y = {y} "
            f"AND {alias}v.x = {x}"
        )
        update = (
            f" LEFT JOIN u{i} {alias}u ON {alias}u.q = {q} AND {alias}u.c = {c} "
            f"AND {alias}u.y = {y} AND {alias}u.x = {x}"
        )
        if state is State.CLEAN:
            return view, f"{alias}v.v"
        if state is State.FULL:
            return update, f"{alias}u.v"
        return update + view, f"COALESCE({alias}u.v, {alias}v.v)"

    def _read_all(self, name: str) -> str:
        """``(q, c, y, x, v)``: input ``name`` as ``view ⊕ patch`` over its whole map."""
        i, source = self.index[name], self.nodes[self.index[name]]
        if source.state is State.FULL:
            return f"SELECT q, c, y, x, v FROM u{i}"
        joins, value = self._read(name, "a", "qq.q", "w.c", "w.y", "w.x")
        return f"SELECT qq.q, w.c, w.y, w.x, {value} AS v FROM q qq CROSS JOIN v{i} w{joins}"

    # -- update forms ------------------------------------------------------------------------

    def _occlude(self) -> str:
        op = self.node.op
        assert isinstance(op, Occlude)
        (source,) = self.node.inputs
        i = self.index[source]
        covered = (
            f"b.y >= qq.top AND b.y < qq.top + {op.patch.h} "
            f"AND b.x >= qq.left AND b.x < qq.left + {op.patch.w}"
        )
        return (
            f"SELECT b.q, b.c, b.y, b.x, CASE WHEN {covered} THEN cc.v ELSE iv.v END AS v "
            f"FROM ({self._cells(True)}) b JOIN q qq ON qq.q = b.q "
            f"JOIN v{i} iv ON iv.c = b.c AND iv.y = b.y AND iv.x = b.x "
            f"JOIN c{self.k} cc ON cc.c = b.c"
        )

    def _project(self) -> str:
        (source,) = self.node.inputs
        return self._read_all(source)

    def _taps(self, columns: str) -> str:
        """``t``: each (output cell, kernel tap) with the input cell ``(ay, ax)`` it reads — a
        convolution's taps are its weight rows ``k<k>``; a pool's, the window's offsets (a pool
        keeps channels, so its cells carry ``c``)."""
        op = self.node.op
        assert isinstance(op, (JoinAggregate, Pool))
        s, d, p = op.window.stride, op.window.dilation, op.window.padding
        pool = isinstance(op, Pool)
        kernel = op.window.kernel
        taps = (
            f"(SELECT a.i AS ky, e.i AS kx FROM range({kernel.h}) a(i), range({kernel.w}) e(i)) w"
            if pool
            else f"k{self.k} w"
        )
        return (
            f"WITH t AS (SELECT b.q, b.y, b.x, {columns}"
            f"{s.h} * b.y + {d.h} * w.ky - {p.top} AS ay, "
            f"{s.w} * b.x + {d.w} * w.kx - {p.left} AS ax "
            f"FROM ({self._cells(pool)}) b CROSS JOIN {taps}) "
        )

    def _conv(self) -> str:
        op = self.node.op
        assert isinstance(op, JoinAggregate)
        (source,) = self.node.inputs
        joins, value = self._read(source, "a", "t.q", "t.c", "t.ay", "t.ax")
        bias, bias_join = "", ""
        if op.bias is not None:
            bias, bias_join = " + MAX(bb.v)", f" JOIN b{self.k} bb ON bb.n = t.n"
        return (
            self._taps("w.n AS n, w.c AS c, w.v AS kv, ")
            + f"SELECT t.q, t.n AS c, t.y, t.x, COALESCE(SUM(t.kv * {value}), 0){bias} AS v "
            f"FROM t{joins}{bias_join} GROUP BY t.q, t.n, t.y, t.x"
        )

    def _conv_delta(self) -> str:
        """``view + SUM(K · (u − v))`` over the input box (convolution is linear)."""
        (source,) = self.node.inputs
        i = self.index[source]
        return (
            self._taps("w.n AS n, w.c AS c, w.v AS kv, ")
            + f", d AS (SELECT t.q, t.n, t.y, t.x, SUM(t.kv * (au.v - av.v)) AS dv FROM t "
            f"JOIN u{i} au ON au.q = t.q AND au.c = t.c AND au.y = t.ay AND au.x = t.ax "
            f"JOIN v{i} av ON av.c = t.c AND av.y = t.ay AND av.x = t.ax "
            "GROUP BY t.q, t.n, t.y, t.x) "
            "SELECT b.q, b.c, b.y, b.x, vv.v + COALESCE(d.dv, 0) AS v "
            f"FROM ({self._cells(True)}) b "
            f"JOIN v{self.k} vv ON vv.c = b.c AND vv.y = b.y AND vv.x = b.x "
            "LEFT JOIN d ON d.q = b.q AND d.n = b.c AND d.y = b.y AND d.x = b.x"
        )

    def _pool(self) -> str:
        op = self.node.op
        assert isinstance(op, Pool)
        (source,) = self.node.inputs
        joins, value = self._read(source, "a", "t.q", "t.c", "t.ay", "t.ax")
        divisor_join = ""
        if op.agg is Agg.MAX:
            aggregate = f"MAX({value})"
        elif (divisor := op.constant_divisor) is not None:
            aggregate = f"COALESCE(SUM({value}), 0) / {divisor}.0"
        else:
            aggregate = f"COALESCE(SUM({value}), 0) / MAX(dd.v)"
            divisor_join = f" JOIN d{self.k} dd ON dd.y = t.y AND dd.x = t.x"
        return (
            self._taps("b.c AS c, ") + f"SELECT t.q, t.c, t.y, t.x, {aggregate} AS v "
            f"FROM t{joins}{divisor_join} GROUP BY t.q, t.c, t.y, t.x"
        )

    def _elementwise(self) -> str:
        op = self.node.op
        (source,) = self.node.inputs
        joins, value = self._read(source, "a", "b.q", "b.c", "b.y", "b.x")
        inner = f"SELECT b.q, b.c, b.y, b.x, {value} AS v FROM ({self._cells(True)}) b{joins}"
        if isinstance(op, BatchNorm):
            return (
                f"SELECT r.q, r.c, r.y, r.x, r.v * ss.scale + ss.shift AS v FROM ({inner}) r "
                f"JOIN s{self.k} ss ON ss.c = r.c"
            )
        assert isinstance(op, Map | Scalar), op
        expression = activation_sql(op, "r.v") if isinstance(op, Map) else scalar_sql(op, "r.v")
        return f"SELECT r.q, r.c, r.y, r.x, {expression} AS v FROM ({inner}) r"

    def _combine(self) -> str:
        """Two inputs, each read as ``view ⊕ patch`` on the output cells; an input of one
        channel or one cell is broadcast (a gate, a layer scale)."""
        op = self.node.op
        assert isinstance(op, Combine)
        reads = [self._broadcast_read(name, alias) for name, alias in zip(self.node.inputs, "ae")]
        (joins_a, a), (joins_b, b) = reads
        forms = {"+": "{a} + {b}", "-": "{a} - {b}", "*": "{a} * {b}", "/": "{a} / {b}"}
        forms.update({"r-": "{b} - {a}", "r/": "{b} / {a}"})
        expression = forms[op.arith.value].format(a=f"({a})", b=f"({b})")
        return (
            f"SELECT b.q, b.c, b.y, b.x, {expression} AS v "
            f"FROM ({self._cells(True)}) b{joins_a}{joins_b}"
        )

    def _broadcast_read(self, name: str, alias: str) -> tuple[str, str]:
        source = self.nodes[self.index[name]]
        count, height, width = self._shape(source)
        out = self._shape(self.node)
        if len(source.schema.shape) != len(self.node.schema.shape) or any(
            size not in (1, full) for size, full in zip((count, height, width), out)
        ):
            raise UnsupportedOperationError(
                f"node {self.node.name}: combining {source.schema.shape} with "
                f"{self.node.schema.shape} has no relational form"
            )
        c, y, x = (
            cell if size == full else "0"
            for cell, size, full in zip(("b.c", "b.y", "b.x"), (count, height, width), out)
        )
        return self._read(name, alias, "b.q", c, y, x)

    def _pad(self) -> str:
        """Cell ``(y, x)`` reads ``(y − top, x − left)``; the pad value outside the input."""
        op = self.node.op
        assert isinstance(op, Pad)
        (source,) = self.node.inputs
        p = op.padding
        joins, value = self._read(source, "a", "b.q", "b.c", f"b.y - {p.top}", f"b.x - {p.left}")
        return (
            f"SELECT b.q, b.c, b.y, b.x, COALESCE({value}, {float(op.value)!r}) AS v "
            f"FROM ({self._cells(True)}) b{joins}"
        )

    def _concat(self) -> str:
        """Channel concatenation: each input's channels, shifted, on the output cells."""
        parts, offset = [], 0
        for position, name in enumerate(self.node.inputs):
            count = self._shape(self.nodes[self.index[name]])[0]
            joins, value = self._read(name, f"a{position}", "b.q", "b.c", "b.y", "b.x")
            parts.append(
                f"SELECT b.q, b.c + {offset} AS c, b.y, b.x, {value} AS v "
                f"FROM ({self._cells(True, count)}) b{joins}"
            )
            offset += count
        return " UNION ALL ".join(parts)

    def _upsample(self) -> str:
        """Nearest: cell ``(y, x)`` reads ``(⌊y/s⌋, ⌊x/s⌋)``. Bilinear (align_corners=False):
        the blend of the four cells around ``((y + ½)/s − ½, (x + ½)/s − ½)``, clamped."""
        op = self.node.op
        assert isinstance(op, Upsample)
        (source,) = self.node.inputs
        sh, sw = op.scale.h, op.scale.w
        if op.mode.copies_blocks:
            joins, value = self._read(source, "a", "b.q", "b.c", f"b.y // {sh}", f"b.x // {sw}")
            if op.mode is UpsampleMode.ZEROS:  # the block's first cell, zeros elsewhere
                value = f"CASE WHEN b.y % {sh} = 0 AND b.x % {sw} = 0 THEN {value} ELSE 0.0 END"
            return f"SELECT b.q, b.c, b.y, b.x, {value} AS v FROM ({self._cells(True)}) b{joins}"
        if op.mode is not UpsampleMode.BILINEAR:
            raise UnsupportedOperationError(
                f"node {self.node.name}: {op.mode.value} upsampling has no relational form"
            )
        _, height, width = self._shape(self.nodes[self.index[source]])
        src_y = f"GREATEST((b.y + 0.5) / {sh} - 0.5, 0.0)"
        src_x = f"GREATEST((b.x + 0.5) / {sw} - 0.5, 0.0)"
        inner = (
            f"SELECT b.q, b.c, b.y, b.x, CAST(FLOOR({src_y}) AS BIGINT) AS y0, "
            f"CAST(FLOOR({src_x}) AS BIGINT) AS x0, {src_y} - FLOOR({src_y}) AS ly, "
            f"{src_x} - FLOOR({src_x}) AS lx FROM ({self._cells(True)}) b"
        )
        reads, values = [], []
        for corner, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            y = f"LEAST(g.y0 + {dy}, {height - 1})"
            x = f"LEAST(g.x0 + {dx}, {width - 1})"
            joins, value = self._read(source, f"a{corner}", "g.q", "g.c", y, x)
            reads.append(joins)
            wy = "g.ly" if dy else "(1 - g.ly)"
            wx = "g.lx" if dx else "(1 - g.lx)"
            values.append(f"{wy} * {wx} * {value}")
        return (
            f"SELECT g.q, g.c, g.y, g.x, {' + '.join(values)} AS v FROM ({inner}) g{''.join(reads)}"
        )

    def _global_pool(self, delta: bool) -> str:
        (source,) = self.node.inputs
        i = self.index[source]
        _, height, width = self._shape(self.nodes[i])
        if delta:
            return (
                "SELECT au.q, au.c, 0 AS y, 0 AS x, "
                f"MAX(vv.v) + SUM(au.v - av.v) / {height * width}.0 AS v FROM u{i} au "
                f"JOIN v{i} av ON av.c = au.c AND av.y = au.y AND av.x = au.x "
                f"JOIN v{self.k} vv ON vv.c = au.c GROUP BY au.q, au.c"
            )
        return (
            f"SELECT r.q, r.c, 0 AS y, 0 AS x, AVG(r.v) AS v FROM ({self._read_all(source)}) r "
            "GROUP BY r.q, r.c"
        )

    def _region_sum(self, delta: bool) -> str:
        op = self.node.op
        assert isinstance(op, RegionSum)
        (source,) = self.node.inputs
        i, alias = self.index[source], "au" if delta else "r"
        weight, join = "", ""
        if op.weights is not None:
            weight = " * w.v"
            join = f" JOIN w{self.k} w ON w.c = {alias}.c AND w.y = {alias}.y AND w.x = {alias}.x"
        if delta:
            return (
                "SELECT au.q, au.c, 0 AS y, 0 AS x, "
                f"MAX(vv.v) + SUM((au.v - av.v){weight}) * {op.scale!r} AS v FROM u{i} au "
                f"JOIN v{i} av ON av.c = au.c AND av.y = au.y AND av.x = au.x{join} "
                f"JOIN v{self.k} vv ON vv.c = au.c GROUP BY au.q, au.c"
            )
        return (
            f"SELECT r.q, r.c, 0 AS y, 0 AS x, SUM(r.v{weight}) * {op.scale!r} AS v "
            f"FROM ({self._read_all(source)}) r{join} GROUP BY r.q, r.c"
        )

    def _flatten(self) -> str:
        (source,) = self.node.inputs
        _, height, width = self._shape(self.nodes[self.index[source]])
        return (
            f"SELECT r.q, r.c * {height * width} + r.y * {width} + r.x AS c, 0 AS y, 0 AS x, r.v "
            f"FROM ({self._read_all(source)}) r"
        )

    def _linear(self, delta: bool) -> str:
        """``Σ_f W(n, f)·A(f) + b(n)``; a map input is read flattened (``f = c·HW + y·W +
        x``). The delta form adds ``W(n, f)·(patch − view)`` over the box's cells to the view."""
        op = self.node.op
        assert isinstance(op, Linear)
        (source,) = self.node.inputs
        i = self.index[source]
        _, height, width = self._shape(self.nodes[i])
        alias = "au" if delta else "r"
        column = f"{alias}.c"
        if self.nodes[i].schema.is_spatial:
            column += f" * {height * width} + {alias}.y * {width} + {alias}.x"
        if delta:
            return (
                "SELECT au.q, w.n AS c, 0 AS y, 0 AS x, MAX(vv.v) + SUM(w.v * (au.v - av.v)) AS v "
                f"FROM u{i} au JOIN v{i} av ON av.c = au.c AND av.y = au.y AND av.x = au.x "
                f"JOIN l{self.k} w ON w.c = {column} JOIN v{self.k} vv ON vv.c = w.n "
                "GROUP BY au.q, w.n"
            )
        bias, bias_join = "", ""
        if op.bias is not None:
            bias, bias_join = " + MAX(bb.v)", f" JOIN b{self.k} bb ON bb.n = w.n"
        return (
            f"SELECT r.q, w.n AS c, 0 AS y, 0 AS x, SUM(w.v * r.v){bias} AS v "
            f"FROM ({self._read_all(source)}) r JOIN l{self.k} w ON w.c = {column}{bias_join} "
            "GROUP BY r.q, w.n"
        )

    def _softmax(self) -> str:
        (source,) = self.node.inputs
        return (
            "SELECT e.q, e.c, 0 AS y, 0 AS x, e.v / SUM(e.v) OVER (PARTITION BY e.q) AS v FROM "
            "(SELECT r.q, r.c, EXP(r.v - MAX(r.v) OVER (PARTITION BY r.q)) AS v "
            f"FROM ({self._read_all(source)}) r) e"
        )


__all__ = ["Statement", "render", "render_text"]
