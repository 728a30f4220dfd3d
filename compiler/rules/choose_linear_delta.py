"""choose_linear_delta: ``L(V ⊕ ΔA) = V_L + L(ΔA)`` for linear ``L`` where it is cheaper (exact).

Identity: the classic IVM delta rule ``Δ(A ⋈ K) = ΔA ⋈ K`` for static ``K``. For a linear
operator (convolution, average pooling, batch norm, residual add) the new value in the box is
the view plus the operator applied to the difference ``Δ = patch − view``, which is zero outside
the input box; no read-in context of the view is needed. The rule compares the cost model's
figures for the recompute and the delta forms (FMAs, then bytes) and keeps the cheaper one;
``CompileOptions.linear_strategy`` can force either, which is how tests cover both.
Preconditions: the node is boxed and its operator is linear (a bias does not matter: it cancels
in the difference).
"""

from __future__ import annotations

from dataclasses import replace

from compiler.cost import incremental_cost
from compiler.ir import (
    Arith,
    BatchNorm,
    Combine,
    JoinAggregate,
    Node,
    Pool,
    State,
    Strategy,
)
from compiler.options import LinearStrategy
from compiler.rules.base import RuleContext
from compiler.types import Agg


def choose_linear_delta(node: Node, ctx: RuleContext) -> Node | None:
    if node.update is None or node.update.state is not State.BOX or not _is_linear(node):
        return None
    forced = ctx.options.linear_strategy
    if forced is LinearStrategy.RECOMPUTE:
        return None
    delta = node.with_update(replace(node.update, strategy=Strategy.DELTA))
    if forced is LinearStrategy.DELTA:
        return delta  # L(V ⊕ Δ) → V_L + L(Δ)
    inputs = ctx.inputs(node)
    if incremental_cost(delta, inputs).key < incremental_cost(node, inputs).key:
        return delta  # L(V ⊕ Δ) → V_L + L(Δ), cheaper here
    return None


def _is_linear(node: Node) -> bool:
    op = node.op
    if isinstance(op, JoinAggregate | BatchNorm):
        return True
    if isinstance(op, Pool):
        return op.agg is Agg.AVG
    return isinstance(op, Combine) and op.arith in (Arith.ADD, Arith.SUB)
