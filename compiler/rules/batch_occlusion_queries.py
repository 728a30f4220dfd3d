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

from compiler.cost import largest_buffer_per_query, peak_bytes_per_query
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
