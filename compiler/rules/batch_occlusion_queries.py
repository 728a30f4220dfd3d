"""batch_occlusion_queries: ``{Q(A ⊕ Δ_k)}_k`` becomes one plan over a batch axis (exact).

Identity: every query runs the same rewritten plan, differing only in its box origins (an int
table indexed by query), so a batch of queries runs each operator once, on buffers with a
leading batch axis. This rule is plan-scoped: it sizes the batch from the memory the plan's
per-query buffers need at their peak (buffers are freed after their last consumer) and the
budget in ``CompileOptions`` (or takes the batch size the caller fixed), and caps it so that
no batch buffer holds more than ``compiler.limits.MAX_ELEMENTS`` values (the kernels' 32-bit
offsets).
"""

from __future__ import annotations

from collections.abc import Mapping

from compiler.cost import WORD
from compiler.ir import Node, State, Strategy
from compiler.limits import MAX_ELEMENTS
from compiler.plan import Batching, Plan
from compiler.rules.base import RuleContext


def batch_occlusion_queries(plan: Plan, ctx: RuleContext) -> Plan:
    queries = len(ctx.positions) * ctx.options.images
    per_query = peak_bytes_per_query(plan)
    budget = ctx.options.memory_budget
    if ctx.options.batch_size is not None:
        size = ctx.options.batch_size
    elif budget is not None:
        size = max(1, budget // max(per_query, 1))
    else:
        size = queries
    size = max(1, min(size, queries))
    cap = max(1, MAX_ELEMENTS // max(largest_buffer_per_query(plan), 1))
    batching = Batching(queries, min(size, cap), per_query, budget, capped=cap < size)
    return plan.with_batching(batching)


def largest_buffer_per_query(plan: Plan) -> int:
    """Values one query puts in the plan's largest batch buffer (an output or a gather)."""
    return max(max(buffer_values(node), scratch_values(node, plan)) for node in plan)


def peak_bytes_per_query(plan: Plan) -> int:
    """Peak of live per-query buffers over a topological execution, plus each step's scratch."""
    remaining = {node.name: len(plan.consumers(node.name)) for node in plan}
    live, peak = 0, 0
    for node in plan:
        output = buffer_values(node)
        peak = max(peak, live + output + scratch_values(node, plan))
        live += output
        for name in node.inputs:
            remaining[name] -= 1
            if remaining[name] == 0:
                live -= buffer_values(plan[name])
    return peak * WORD


def buffer_values(node: Node) -> int:
    """Values one query keeps for ``node``'s output."""
    update = node.update
    if update is None or update.state is State.CLEAN:
        return 0
    if update.state is State.FULL:
        return node.schema.numel
    assert update.box is not None
    return node.schema.channels * update.box.area


def scratch_values(node: Node, plan: Plan | Mapping[str, Node]) -> int:
    """Values of the transient gather buffers ``node`` needs while it runs."""
    update = node.update
    if update is None or update.strategy not in (
        Strategy.RECOMPUTE,
        Strategy.DELTA,
        Strategy.BOUNDING_BOX,
    ):
        return 0
    cells = update.read.area if update.read is not None else (update.box.area if update.box else 0)
    return sum(plan[name].schema.shape[0] for name in node.inputs) * cells
