"""choose_linear_delta: ``L(V ⊕ ΔA) = V_L + L(ΔA)`` for linear ``L`` where it is cheaper (exact).

Identity: the classic IVM delta rule ``Δ(A ⋈ K) = ΔA ⋈ K`` for static ``K``. For a linear
operator (convolution, average pooling, batch norm, residual add) the new value in the box is
the view plus the operator applied to the difference ``Δ = patch − view``, which is zero outside
the input box; no read-in context of the view is needed. The rule compares the cost model's
figures for the recompute and the delta forms (FMAs, then bytes) and keeps the cheaper one;
``CompileOptions.linear_strategy`` can force either, which is how tests cover both.

Why it does not fire by default: with dense kernels the two forms run the same taps — the
delta's zero-padded window around the input box is the recompute's read window — so their FMAs
are equal, and the delta form moves more bytes (it reads ``patch − view`` over the input box
and the output view to add to). Under "FMAs, then bytes" recompute always wins; the delta form
would pay off only with a kernel that skips the zeros of Δ (sparse Δ: a patch much smaller
than the read window) or a cost model that charges gathers of the view more than reads of Δ.
Explain prints what the delta form would cost beside each linear node it did not choose
(``delta +…B``), and the identity stays tested through the forced strategy.
Preconditions: the node is boxed and its operator is linear (a bias does not matter: it cancels
in the difference).
"""

from __future__ import annotations

from dataclasses import replace

from compiler.cost import incremental_cost
from compiler.ir import (
    Node,
    State,
    Strategy,
    is_linear,
)
from compiler.options import LinearStrategy
from compiler.rules.base import RuleContext


def choose_linear_delta(node: Node, ctx: RuleContext) -> Node | None:
    if node.update is None or node.update.state is not State.BOX or not is_linear(node.op):
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
