"""project_before_global: ``G(V ⊕ ΔA) = G(Project(V, ΔA))`` for global-context ``G`` (exact).

Identity: an operator whose every output reads every input cell (flatten, linear, adaptive
pooling, softmax) — or any operator with a full per-query input — gains nothing from boxes, so
each boxed input is projected once into a full per-query tensor (``view ⊕ patch``) and the
operator runs on full tensors.
Precondition: the operator is global, or an input is already full.
"""

from __future__ import annotations

from compiler.ir import Node, State
from compiler.rules.base import RuleContext, RuleResult, full_update_with_projections


def project_before_global(node: Node, ctx: RuleContext) -> RuleResult:
    sources = ctx.inputs(node)
    if not (node.op.GLOBAL or any(s.state is State.FULL for s in sources)):
        return None
    return full_update_with_projections(node, ctx)  # G(Project(V ⊕ Δ))
