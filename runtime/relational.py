"""The incremental plan run as SQL in DuckDB (``compiler.relational``): the relational
semantics made executable, for tiny tensors — every cell is a row.

``heatmap`` loads the clean views, the weights, the queries and their box origins as Arrow
tables, runs one ``CREATE TABLE u<k> AS …`` per rewritten node, and assembles the heatmap from
the output relation: the SQL answer to the same question the torch and Triton backends answer.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from compiler.boxes import Origins, Positions
from compiler.ir import (
    BatchNorm,
    Constant,
    Input,
    JoinAggregate,
    Linear,
    Node,
    Occlude,
    Pool,
    RegionSum,
)
from compiler.plan import Plan
from compiler.relational import render
from compiler.types import Agg, Score, Size
from runtime import full as full_ops
from runtime.weights import Weights


def heatmap(
    plan: Plan,
    origins: dict[str, Origins],
    positions: Positions,
    weights: Weights,
    image: Tensor,
    *,
    score: Score = Score.PROB,
    target: int | None = None,
    chosen: np.ndarray | None = None,
    connection: Any = None,
) -> Tensor:
    """The ``[rows, cols]`` heatmap of ``image`` ([C,H,W]) computed by DuckDB from the
    rewritten ``plan``; ``chosen`` limits the queries to those grid positions (NaN elsewhere)."""
    statements = render(plan)  # first: an unsupported node fails before any table is built
    db = connection if connection is not None else duckdb.connect()
    nodes = list(plan)
    views = _views(nodes, weights, image)
    index = np.arange(len(positions)) if chosen is None else np.asarray(chosen, dtype=np.int64)
    row, col = np.divmod(index, positions.cols)
    tables: dict[str, pa.Table] = {
        "q": pa.table(
            {
                "q": np.arange(len(index)),
                "top": positions.top[index],
                "left": positions.left[index],
                "row": row,
                "col": col,
            }
        )
    }
    for k, node in enumerate(nodes):
        tables[f"v{k}"] = _cells(views[node.name][0])
        if node.name in origins:
            y0, x0 = origins[node.name]
            tables[f"o{k}"] = pa.table(
                {"q": np.arange(len(index)), "y0": y0[index], "x0": x0[index]}
            )
        tables.update(_weights(k, node, weights, views))
    for name, table in tables.items():
        db.register(name, table)
    for statement in statements:
        db.execute(f"CREATE OR REPLACE TEMP TABLE u{statement.index} AS {statement.sql}")
    out = len(nodes) - 1 if plan.output is None else [n.name for n in nodes].index(plan.output)
    logits = views[nodes[out].name][0].reshape(-1)
    chosen_class = int(logits.argmax()) if target is None else target
    values = "EXP(u.v - MAX(u.v) OVER (PARTITION BY u.q))"
    if score is Score.PROB:
        scored = (
            f"SELECT e.q, e.c, e.v / SUM(e.v) OVER (PARTITION BY e.q) AS v FROM "
            f"(SELECT u.q, u.c, {values} AS v FROM u{out} u) e"
        )
    else:
        scored = f"SELECT u.q, u.c, u.v FROM u{out} u"
    rows = db.execute(
        f"SELECT qq.row, qq.col, s.v FROM ({scored}) s JOIN q qq ON qq.q = s.q WHERE s.c = ?",
        [chosen_class],
    ).fetchall()
    result = torch.full((positions.rows, positions.cols), float("nan"))
    for r, c, v in rows:
        result[r, c] = v
    return result


def _views(nodes: list[Node], weights: Weights, image: Tensor) -> dict[str, Tensor]:
    """Every node's output on the clean image (batch of one)."""
    values: dict[str, Tensor] = {}
    with torch.no_grad():
        for node in nodes:
            if isinstance(node.op, Input):
                values[node.name] = image[None].float()
            elif isinstance(node.op, Constant):
                values[node.name] = weights[node.op.ref].float().reshape(1, *node.schema.shape)
            else:
                values[node.name] = full_ops.full(
                    node, [values[i] for i in node.inputs], weights
                ).float()
    return values


def _cells(value: Tensor) -> pa.Table:
    """``(c, y, x, v)`` of a ``[C, H, W]`` map, or ``(c, 0, 0, v)`` of a vector."""
    array = value.detach()
    if array.dim() != 3:
        array = array.reshape(array.shape[0], 1, 1)
    c, y, x = np.indices(array.shape).reshape(3, -1)
    return pa.table({"c": c, "y": y, "x": x, "v": array.double().numpy().reshape(-1)})


def _weights(k: int, node: Node, weights: Weights, views: dict[str, Tensor]) -> dict[str, pa.Table]:
    op, tables = node.op, {}
    if isinstance(op, JoinAggregate):
        w = weights[op.weight].double()
        out, per_group = w.shape[0], w.shape[1]
        n, c, ky, kx = np.indices(w.shape).reshape(4, -1)
        absolute = (n // (out // op.groups)) * per_group + c
        tables[f"k{k}"] = pa.table(
            {"n": n, "c": absolute, "ky": ky, "kx": kx, "v": w.numpy().reshape(-1)}
        )
    if isinstance(op, Linear):
        w = weights[op.weight].double()
        n, c = np.indices(w.shape).reshape(2, -1)
        tables[f"l{k}"] = pa.table({"n": n, "c": c, "v": w.numpy().reshape(-1)})
    if isinstance(op, (JoinAggregate, Linear)) and op.bias is not None:
        bias = weights[op.bias].double().numpy()
        tables[f"b{k}"] = pa.table({"n": np.arange(len(bias)), "v": bias})
    if isinstance(op, BatchNorm):
        mean, var = weights[op.mean].double(), weights[op.var].double()
        gamma = weights[op.weight].double() if op.weight is not None else torch.ones_like(mean)
        beta = weights[op.bias].double() if op.bias is not None else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + op.eps)
        tables[f"s{k}"] = pa.table(
            {
                "c": np.arange(len(mean)),
                "scale": scale.numpy(),
                "shift": (beta - mean * scale).numpy(),
            }
        )
    if isinstance(op, RegionSum) and op.weights is not None:
        source = views[node.inputs[0]]
        channels, height, width = source.shape[1:]
        region = full_ops.region_weights(op, weights, Size(height, width)).double()
        tables[f"w{k}"] = _cells(region.expand(channels, -1, -1))
    if isinstance(op, Occlude):
        channels = node.schema.shape[0]
        color = np.broadcast_to(np.asarray(op.color, dtype=np.float64), (channels,))
        tables[f"c{k}"] = pa.table({"c": np.arange(channels), "v": color})
    if isinstance(op, Pool) and op.agg is Agg.AVG and op.constant_divisor is None:
        source = views[node.inputs[0]]
        tables[f"d{k}"] = _divisors(op, source.shape[2], source.shape[3], node.schema.shape[1:])
    return tables


def _divisors(op: Pool, height: int, width: int, out: tuple[int, ...]) -> pa.Table:
    """Per output cell, the divisor of an average pool: the window's cells inside the image
    (``count_include_pad=False``) or inside the padded image, never past it (ceil mode)."""
    w, p = op.window, op.window.padding

    def counts(
        size: int, kernel: int, stride: int, before: int, after: int, cells: int
    ) -> np.ndarray:
        start = np.arange(cells) * stride - before
        end = start + kernel
        if op.count_include_pad:
            return np.minimum(end, size + after) - start
        return np.minimum(end, size) - np.maximum(start, 0)

    rows = counts(height, w.kernel.h, w.stride.h, p.top, p.bottom, out[0])
    cols = counts(width, w.kernel.w, w.stride.w, p.left, p.right, out[1])
    y, x = np.indices((out[0], out[1])).reshape(2, -1)
    return pa.table({"y": y, "x": x, "v": (rows[y] * cols[x]).astype(np.float64)})
