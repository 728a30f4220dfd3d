"""Rewritten plan -> physical plan: pick the kernel of each node, plan buffer lifetimes, and
find the materialized views that some kernel reads."""

from __future__ import annotations

from compiler.ir import (
    ELEMENTWISE,
    Combine,
    Concat,
    GlobalAvgPool,
    JoinAggregate,
    Node,
    Pad,
    Pool,
    State,
    Strategy,
)
from compiler.physical import KernelId, PhysicalPlan, Step
from compiler.plan import Plan


def lower(plan: Plan) -> PhysicalPlan:
    """Choose a kernel per node; free every per-query buffer after its last reader."""
    assert plan.batching is not None, "lower() needs a batched plan"
    last_reader: dict[str, str] = {}
    for node in plan:
        for name in node.inputs:
            last_reader[name] = node.name
    steps = []
    for node in plan:
        frees = tuple(name for name in dict.fromkeys(node.inputs) if last_reader[name] == node.name)
        steps.append(Step(node, kernel_for(node), frees))
    return PhysicalPlan(tuple(steps), frozenset(_views_read(plan)), plan.output, plan.batching)


def kernel_for(node: Node) -> KernelId:
    """The reference kernel that computes ``node`` in its update form."""
    update = node.update
    assert update is not None, node.name
    op, strategy = node.op, update.strategy
    simple = {
        Strategy.VIEW: KernelId.VIEW,
        Strategy.OCCLUDE: KernelId.OCCLUDE,
        Strategy.PROJECT: KernelId.PROJECT,
        Strategy.FULL: KernelId.FULL,
    }
    if strategy in simple:
        return simple[strategy]
    if strategy is Strategy.ELEMENTWISE:
        return KernelId.SHIFT if isinstance(op, Pad) else KernelId.ELEMENTWISE
    if strategy is Strategy.RECOMPUTE:
        return KernelId.GATHER_CONV2D if isinstance(op, JoinAggregate) else KernelId.GATHER_POOL2D
    if strategy is Strategy.BOUNDING_BOX:
        return KernelId.GATHER_CONCAT if isinstance(op, Concat) else KernelId.GATHER_COMBINE
    return _delta_kernel(node)


def _delta_kernel(node: Node) -> KernelId:
    op = node.op
    kernels = (
        (JoinAggregate, KernelId.DELTA_CONV2D),
        (Pool, KernelId.DELTA_POOL2D),
        (ELEMENTWISE, KernelId.DELTA_ELEMENTWISE),
        (Combine, KernelId.DELTA_COMBINE),
        (GlobalAvgPool, KernelId.DELTA_GLOBAL_POOL),
    )
    for kinds, kernel in kernels:
        if isinstance(op, kinds):
            return kernel
    raise AssertionError(f"no delta kernel for {type(op).__name__}")


def _views_read(plan: Plan) -> set[str]:
    """Nodes whose materialized view some kernel reads (the others are never kept)."""
    needed = {plan.output}
    for node in plan:
        strategy = node.update.strategy if node.update else None
        if strategy in (Strategy.ELEMENTWISE, Strategy.VIEW):
            continue
        if strategy is Strategy.DELTA:
            needed.add(node.name)  # view_out + op(Δ)
        for name in node.inputs:
            if strategy is not Strategy.FULL or plan[name].state is State.CLEAN:
                needed.add(name)
    return needed
