"""Relational export: convolution, pooling and element-wise nodes as SQL text.

Relations (every value column is ``v``):

- ``A(c, y, x, v)`` — the input feature map, in-range cells only (padding is absent tuples:
  zero for a sum, ignored by MAX);
- ``K(n, c, ky, kx, v)`` — convolution weights, ``c`` the absolute input channel (so grouped
  and depthwise convolutions join on ``A.c = K.c`` too); ``B(n, v)`` — the bias;
- ``G(y, x)`` — the output grid; ``W(ky, kx)`` — a pooling window's offsets;
  ``D(y, x, v)`` — per-output divisors of an average pool whose border windows differ;
- ``S(c, scale, shift)`` — batch norm folded to a per-channel affine map.

The statements run on sqlglot's executor in tests (``tests/compiler/test_sql.py``) and must
equal torch on small tensors: the relational semantics is executable, not decorative.
"""

from __future__ import annotations

from compiler.ir import Activation, Arith, BatchNorm, JoinAggregate, Map, Node, Pool, Scalar
from compiler.types import Agg, Window


def _window_cte(window: Window, offsets: str, columns: str) -> str:
    """``T``: every (output cell, window offset) pair with the input cell it reads."""
    s, d, p = window.stride, window.dilation, window.padding
    return (
        f"WITH T AS (SELECT {columns}G.y AS y, G.x AS x, "
        f"{s.h} * G.y + {d.h} * {offsets}.ky - {p.top} AS ay, "
        f"{s.w} * G.x + {d.w} * {offsets}.kx - {p.left} AS ax FROM G CROSS JOIN {offsets}) "
    )


def conv_sql(op: JoinAggregate) -> str:
    """``O(n, y, x) = Σ A.v·K.v`` over ``A.c = K.c ∧ A.y = S·y + D·K.ky − P ∧ …``, grouped by
    ``(n, y, x)``."""
    bias_value = " + MAX(B.v)" if op.bias is not None else ""
    bias_join = " JOIN B ON B.n = T.n" if op.bias is not None else ""
    return (
        _window_cte(op.window, "K", "K.n AS n, K.c AS c, K.v AS kv, ")
        + f"SELECT T.n AS c, T.y AS y, T.x AS x, SUM(A.v * T.kv){bias_value} AS v "
        f"FROM T JOIN A ON A.c = T.c AND A.y = T.ay AND A.x = T.ax{bias_join} "
        "GROUP BY T.n, T.y, T.x"
    )


def pool_sql(op: Pool, constant_divisor: int | None) -> str:
    """MAX or AVG of ``A.v`` over each window; no channel join."""
    if op.agg is Agg.MAX:
        value, divisor_join = "MAX(A.v)", ""
    elif constant_divisor is not None:
        value, divisor_join = f"SUM(A.v) / {constant_divisor}.0", ""
    else:
        value, divisor_join = "SUM(A.v) / MAX(D.v)", " JOIN D ON D.y = T.y AND D.x = T.x"
    return (
        _window_cte(op.window, "W", "") + f"SELECT A.c AS c, T.y AS y, T.x AS x, {value} AS v "
        f"FROM T JOIN A ON A.y = T.ay AND A.x = T.ax{divisor_join} GROUP BY A.c, T.y, T.x"
    )


def _clamp(expr: str, low: float, high: float) -> str:
    return (
        f"CASE WHEN {expr} < {low!r} THEN {low!r} WHEN {expr} > {high!r} THEN {high!r} "
        f"ELSE {expr} END"
    )


def activation_sql(op: Map, v: str = "A.v") -> str:
    """The scalar expression of an activation over ``v``.

    >>> activation_sql(Map(Activation.RELU))
    'CASE WHEN A.v > 0.0 THEN A.v ELSE 0.0 END'
    """
    expressions = {
        Activation.IDENTITY: v,
        Activation.RELU: f"CASE WHEN {v} > 0.0 THEN {v} ELSE 0.0 END",
        Activation.RELU6: _clamp(v, 0.0, 6.0),
        Activation.HARDTANH: _clamp(v, op.alpha, op.beta),
        Activation.LEAKY_RELU: f"CASE WHEN {v} > 0.0 THEN {v} ELSE {op.alpha!r} * {v} END",
        Activation.SIGMOID: f"1.0 / (1.0 + EXP(-{v}))",
        Activation.SILU: f"{v} / (1.0 + EXP(-{v}))",
        Activation.TANH: f"TANH({v})",
        Activation.HARDSIGMOID: f"({_clamp(f'({v} + 3.0)', 0.0, 6.0)}) / 6.0",
        Activation.HARDSWISH: f"{v} * ({_clamp(f'({v} + 3.0)', 0.0, 6.0)}) / 6.0",
        Activation.GELU: f"0.5 * {v} * (1.0 + ERF({v} / SQRT(2.0)))",
    }
    return expressions[op.fn]


def map_sql(op: Map | Scalar | BatchNorm) -> str:
    """A per-tuple map: the key columns pass through, ``v`` is transformed."""
    if isinstance(op, Map):
        return f"SELECT A.c AS c, A.y AS y, A.x AS x, {activation_sql(op)} AS v FROM A"
    if isinstance(op, BatchNorm):
        return (
            "SELECT A.c AS c, A.y AS y, A.x AS x, A.v * S.scale + S.shift AS v "
            "FROM A JOIN S ON S.c = A.c"
        )
    return f"SELECT A.c AS c, A.y AS y, A.x AS x, {scalar_sql(op)} AS v FROM A"


def scalar_sql(op: Scalar, v: str = "A.v") -> str:
    """The scalar expression of ``v ∘ constant``.

    >>> scalar_sql(Scalar(Arith.RSUB, 1.0))
    '1.0 - A.v'
    """
    forms = {
        Arith.ADD: "{v} + {c}",
        Arith.SUB: "{v} - {c}",
        Arith.RSUB: "{c} - {v}",
        Arith.MUL: "{v} * {c}",
        Arith.DIV: "{v} / {c}",
        Arith.RDIV: "{c} / {v}",
    }
    return forms[op.arith].format(v=v, c=repr(op.value))


def node_sql(node: Node) -> str | None:
    """SQL for ``node`` over its input ``A``, or None for operators without an export."""
    op = node.op
    if isinstance(op, JoinAggregate):
        return conv_sql(op)
    if isinstance(op, Pool):
        return pool_sql(op, op.constant_divisor)
    if isinstance(op, (Map, Scalar, BatchNorm)):
        return map_sql(op)
    return None
