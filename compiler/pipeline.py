"""The rewrite pipeline: ordered stages of rules, the driver that applies them, and its trace.

Each stage is one topological walk; every node is offered to the stage's rules in order and the
first answer wins; what a rule returns is checked by ``verify_node`` against its inputs at
once (a violation names the rule), and each application (rule, node) is traced. After every
stage the driver drops nodes the output no longer reads, runs ``verify()`` on the whole plan and
records it for ``explain(verbose=True)``. Rules read a frozen ``RuleContext``; per-query box
origins are a pure function of the rewritten boxes (``boxes.plan_origins``).
The exact pipeline never contains an approximate rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from types import MappingProxyType

import networkx as nx

from compiler import boxes
from compiler.boxes import Origins, Positions
from compiler.errors import KryptonError
from compiler.ir import Node
from compiler.options import CompileOptions
from compiler.plan import Plan, verify_node
from compiler.rules.approx.threshold_projective_field import threshold_projective_field
from compiler.rules.base import Rule, RuleContext
from compiler.rules.batch_occlusion_queries import batch_occlusion_queries
from compiler.rules.choose_linear_delta import choose_linear_delta
from compiler.rules.fold_mask_into_region_sum import fold_mask_into_region_sum
from compiler.rules.fold_pad_into_conv import fold_pad_into_conv
from compiler.rules.keep_clean_views import keep_clean_views
from compiler.rules.merge_update_boxes import merge_update_boxes
from compiler.rules.project_before_global import project_before_global
from compiler.rules.push_delta_through_dense_head import push_delta_through_dense_head
from compiler.rules.push_delta_through_global_pool import push_delta_through_global_pool
from compiler.rules.push_delta_through_join import push_delta_through_join
from compiler.rules.push_delta_through_map import push_delta_through_map
from compiler.rules.push_delta_through_occlude import push_delta_through_occlude
from compiler.rules.push_delta_through_region_sum import push_delta_through_region_sum
from compiler.rules.push_delta_through_upsample import push_delta_through_upsample

PlanRule = Callable[[Plan, RuleContext], Plan]


@dataclass(frozen=True)
class Stage:
    """Rules offered to every node in one walk; ``maintains`` stages must give every node an
    update form. A plan-scoped stage has one ``plan_rule`` instead, applied to the whole plan
    (batching: its size depends on every buffer at once)."""

    name: str
    rules: tuple[Rule, ...] = ()
    maintains: bool = False
    plan_rule: PlanRule | None = None


STAGES: tuple[Stage, ...] = (
    # Folding padding first lets the boxes see the convolution's true (asymmetric) padding;
    # folding a constant mask into its spatial aggregate leaves one region sum to maintain.
    Stage("normalize", (Rule(fold_pad_into_conv), Rule(fold_mask_into_region_sum))),
    Stage(
        "maintain",
        (
            # Clean subgraphs (constants, weights-only branches) keep their views.
            Rule(keep_clean_views),
            Rule(push_delta_through_occlude),
            Rule(push_delta_through_join),
            Rule(push_delta_through_map),
            Rule(push_delta_through_upsample),
            Rule(merge_update_boxes),
            # The incremental global pool must win over projecting before a global operator.
            Rule(push_delta_through_global_pool),
            Rule(push_delta_through_region_sum),
            Rule(project_before_global),
        ),
        maintains=True,
    ),
    # Runs once every box is known: the delta forms' costs depend on the input boxes (and a
    # dense head's on how many queries share each box origin).
    Stage(
        "choose", (Rule(choose_linear_delta), Rule(push_delta_through_dense_head)), maintains=True
    ),
    # Last: the batch size follows from the final plan's per-query buffers.
    Stage("batch", plan_rule=batch_occlusion_queries),
)

# Approximate rules, by the stage they join (first in it) when a workload asks for them.
APPROXIMATE: dict[str, tuple[Rule, ...]] = {
    "maintain": (Rule(threshold_projective_field, exact=False),),
}


def stages(options: CompileOptions) -> tuple[Stage, ...]:
    """The pipeline for ``options``: ``STAGES``, plus the approximate rules it asks for."""
    if options.tau >= 1.0:
        return STAGES
    return tuple(replace(s, rules=APPROXIMATE.get(s.name, ()) + s.rules) for s in STAGES)


@dataclass(frozen=True)
class TraceEntry:
    """One step of the pipeline: the rules that fired (with counts), each application (rule,
    the node it rewrote) in walk order, and the plan after it."""

    stage: str
    fired: tuple[tuple[str, int], ...]
    plan: Plan
    applied: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Optimized:
    """The rewritten, batched plan, the trace that produced it and the per-query box origins."""

    plan: Plan
    trace: tuple[TraceEntry, ...]
    origins: dict[str, Origins]
    approximate: frozenset[str] = frozenset()  # rules that fired with ``Rule.exact`` false

    @property
    def rules_fired(self) -> tuple[tuple[str, int], ...]:
        return tuple(pair for entry in self.trace for pair in entry.fired)


def optimize(logical: Plan, options: CompileOptions, positions: Positions) -> Optimized:
    """Apply every stage to ``logical`` for the queries at ``positions``."""
    plan, trace = logical, []
    for stage in stages(options):
        if stage.plan_rule is not None:
            ctx = RuleContext(options, positions, MappingProxyType({n.name: n for n in plan}))
            plan = stage.plan_rule(plan, ctx)
            applied: tuple[tuple[str, str], ...] = ((stage.plan_rule.__name__, "(the whole plan)"),)
        else:
            plan, applied = _run_stage(stage, plan, options, positions)
        plan.verify()
        names = [rule for rule, _ in applied]
        fired = tuple((name, names.count(name)) for name in dict.fromkeys(names))
        trace.append(TraceEntry(stage.name, _in_stage_order(stage, fired), plan, applied))
    inexact = frozenset(r.name for stage in stages(options) for r in stage.rules if not r.exact)
    fired_names = {name for entry in trace for name, _ in entry.fired}
    origins = boxes.plan_origins({n.name: n for n in plan}, positions)
    return Optimized(plan, tuple(trace), origins, inexact & fired_names)


def _in_stage_order(
    stage: Stage, fired: tuple[tuple[str, int], ...]
) -> tuple[tuple[str, int], ...]:
    order = {rule.name: index for index, rule in enumerate(stage.rules)}
    return tuple(sorted(fired, key=lambda pair: order.get(pair[0], 0)))


def _run_stage(
    stage: Stage, plan: Plan, options: CompileOptions, positions: Positions
) -> tuple[Plan, tuple[tuple[str, str], ...]]:
    """One topological walk: every node offered to the stage's rules, the first answer kept;
    returns the plan and each application (rule, node)."""
    consumers = MappingProxyType({node.name: plan.consumers(node.name) for node in plan})
    rewritten: dict[str, Node] = {}
    ctx = RuleContext(options, positions, MappingProxyType(rewritten), consumers)
    applied: list[tuple[str, str]] = []
    for node in plan:
        for result_node in _rewrite(node, stage, ctx, applied):
            rewritten[result_node.name] = result_node
    return _live(Plan(rewritten.values(), plan.output)), tuple(applied)


def _rewrite(
    node: Node, stage: Stage, ctx: RuleContext, applied: list[tuple[str, str]]
) -> tuple[Node, ...]:
    for rule in stage.rules:
        result = rule.fn(node, ctx)
        if result is not None:
            applied.append((rule.name, node.name))
            nodes = result if isinstance(result, tuple) else (result,)
            _verify_rewrite(rule, nodes, ctx)
            return nodes
    if stage.maintains and node.update is None:
        raise KryptonError(
            f"no maintenance rule applies to node {node.name!r} ({type(node.op).__name__}); "
            "this is a bug in krypton-ql"
        )
    return (node,)


def _verify_rewrite(rule: Rule, nodes: tuple[Node, ...], ctx: RuleContext) -> None:
    """``verify_node`` on what a rule returned, against the inputs it reads (already rewritten,
    or inserted by the same rule); a violation names the rule."""
    known = dict(ctx.nodes)
    for produced in nodes:
        try:
            verify_node(produced, [known[name] for name in produced.inputs])
        except KeyError as missing:
            raise KryptonError(
                f"rule {rule.name} produced node {produced.name!r} reading the unknown node "
                f"{missing}; this is a bug in krypton-ql"
            ) from None
        except KryptonError as error:
            raise KryptonError(f"rule {rule.name}: {error}") from None
        known[produced.name] = produced


def _live(plan: Plan) -> Plan:
    """Drop nodes the output does not read (e.g. a padding folded into its convolution)."""
    keep = nx.ancestors(plan.graph, plan.output) | {plan.output}
    return Plan([n for n in plan if n.name in keep], plan.output, plan.batching)
