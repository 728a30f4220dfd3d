"""Rewritten plan -> physical plan.

Pick the kernel of each node, fuse chains of element-wise nodes into the epilogue of the kernel
that produces their input, size every launch for the plan's batch size, plan buffer lifetimes,
and find the materialized views that some kernel reads.
"""

from __future__ import annotations

from compiler.ir import (
    ELEMENTWISE,
    Combine,
    Concat,
    GlobalAvgPool,
    JoinAggregate,
    Linear,
    Node,
    Pad,
    Pointwise,
    Pool,
    RegionSum,
    State,
    Strategy,
    Upsample,
)
from compiler.physical import BOXED, KernelId, Launch, PhysicalPlan, Step
from compiler.plan import Plan


def lower(plan: Plan, *, fuse: bool = True) -> PhysicalPlan:
    """Choose a kernel per node, fuse element-wise epilogues (unless ``fuse`` is false), and
    free every per-query buffer after the step that reads it last."""
    assert plan.batching is not None, "lower() needs a batched plan"
    groups = _fuse(plan) if fuse else [[node] for node in plan]
    last_step: dict[str, int] = {}
    for index, group in enumerate(groups):
        for node in group:
            for name in node.inputs:
                last_step[name] = index
    steps = []
    for index, (head, *epilogue) in enumerate(groups):
        inside = {node.name for node in epilogue} | {head.name}
        reads = dict.fromkeys(
            name for node in (head, *epilogue) for name in node.inputs if name not in inside
        )
        frees = tuple(name for name in reads if last_step[name] == index)
        kernel = kernel_for(head)
        launch = launch_for(head, kernel, plan.batching.batch_size)
        steps.append(Step(head, kernel, frees, tuple(epilogue), launch))
    return PhysicalPlan(
        tuple(steps), tuple(plan), frozenset(_views_read(plan)), plan.output, plan.batching
    )


def _fuse(plan: Plan) -> list[list[Node]]:
    """Group nodes into steps: an element-wise node joins the step of its only input when that
    input is boxed, read by nothing else, and not the plan's output."""
    groups: list[list[Node]] = []
    step_of: dict[str, int] = {}
    for node in plan:
        source = node.inputs[0] if len(node.inputs) == 1 else None
        if source is not None and _fusable(node) and source in step_of:
            group = groups[step_of[source]]
            tail = group[-1]
            if (
                tail.name == source
                and kernel_for(group[0]) in BOXED
                and plan.consumers(source) == (node.name,)
                and source != plan.output
            ):
                group.append(node)
                step_of[node.name] = step_of[source]
                continue
        step_of[node.name] = len(groups)
        groups.append([node])
    return groups


def _fusable(node: Node) -> bool:
    update = node.update
    return (
        update is not None
        and update.strategy is Strategy.ELEMENTWISE
        and isinstance(node.op, ELEMENTWISE)
    )


def kernel_for(node: Node) -> KernelId:
    """The kernel that computes ``node`` in its update form."""
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
        if isinstance(op, Pointwise):
            return KernelId.POINTWISE
        if isinstance(op, Upsample):
            return KernelId.UPSAMPLE
        return KernelId.SHIFT if isinstance(op, Pad) else KernelId.ELEMENTWISE
    if strategy is Strategy.RECOMPUTE:
        if isinstance(op, Upsample):
            return KernelId.GATHER_UPSAMPLE
        return KernelId.GATHER_CONV if isinstance(op, JoinAggregate) else KernelId.GATHER_POOL
    if strategy is Strategy.BOUNDING_BOX:
        return KernelId.GATHER_CONCAT if isinstance(op, Concat) else KernelId.GATHER_COMBINE
    return _delta_kernel(node)


def _delta_kernel(node: Node) -> KernelId:
    op = node.op
    kernels = (
        (JoinAggregate, KernelId.DELTA_CONV),
        (Pool, KernelId.DELTA_POOL),
        (ELEMENTWISE, KernelId.DELTA_ELEMENTWISE),
        (Combine, KernelId.DELTA_COMBINE),
        (GlobalAvgPool, KernelId.DELTA_GLOBAL_POOL),
        (RegionSum, KernelId.DELTA_REGION_SUM),
        (Linear, KernelId.DELTA_LINEAR),
    )
    for kinds, kernel in kernels:
        if isinstance(op, kinds):
            return kernel
    raise AssertionError(f"no delta kernel for {type(op).__name__}")


def launch_for(node: Node, kernel: KernelId, batch: int) -> Launch | None:
    """The size of the launch that computes ``node`` for ``batch`` queries (None: no launch)."""
    if kernel in (KernelId.VIEW, KernelId.SHIFT):
        return None
    update = node.update
    assert update is not None
    channels = node.schema.shape[0] if node.schema.shape else 1
    area = update.box.area if update.box is not None else node.schema.numel // max(channels, 1)
    if kernel in (KernelId.GATHER_CONV, KernelId.DELTA_CONV):
        op = node.op
        assert isinstance(op, JoinAggregate)
        reduction = op.in_channels // op.groups * op.window.kernel.area
        n = op.out_channels // op.groups
        return Launch(batch, area, n, reduction, op.groups, gemm=True)
    if kernel is KernelId.FULL:
        return Launch(batch, node.schema.numel)
    return Launch(batch, channels * area)


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
