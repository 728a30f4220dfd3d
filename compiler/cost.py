"""Per-query cost of a node, naive and incremental: FMAs of convolutions and linear layers
(research §2.2: pooling and element-wise work count zero FMAs; a channels-last linear layer
counts its FMAs per position, the exact fallback what torch's flop counter says) and bytes
moved.

Costs are per query and per image; bytes count values read and written, 4 bytes each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from compiler.ir import (
    Aten,
    GlobalAvgPool,
    JoinAggregate,
    Linear,
    Node,
    Pointwise,
    RegionSum,
    State,
    Strategy,
)
from compiler.plan import Plan

WORD = 4  # bytes per value in the accounting (fp32)


@dataclass(frozen=True, slots=True)
class Cost:
    """FMAs and bytes; compared lexicographically (FMAs first).

    >>> Cost(10, 4) + Cost(1, 8), Cost(1, 100).key < Cost(2, 0).key
    (Cost(fma=11, bytes=12), True)
    """

    fma: int = 0
    bytes: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.fma + other.fma, self.bytes + other.bytes)

    @property
    def key(self) -> tuple[int, int]:
        return (self.fma, self.bytes)


def fma(node: Node, out_cells: int) -> int:
    """FMAs of ``node`` when it computes ``out_cells`` output positions per channel."""
    op = node.op
    if isinstance(op, JoinAggregate):
        kernel = op.window.kernel
        return out_cells * op.out_channels * (op.in_channels // op.groups) * kernel.area
    if isinstance(op, Linear):
        return op.weight.shape[0] * op.weight.shape[1]
    if isinstance(op, Pointwise):
        return out_cells * op.fma_per_cell
    if isinstance(op, Aten):
        return op.fma
    return 0


def naive_cost(node: Node, inputs: list[Node]) -> Cost:
    """Cost of computing ``node`` in full re-inference."""
    cells = node.schema.size.area if node.schema.is_spatial else 1
    moved = node.schema.numel + sum(i.schema.numel for i in inputs)
    return Cost(fma(node, cells), moved * WORD)


def incremental_cost(node: Node, inputs: list[Node]) -> Cost:
    """Cost of ``node`` in its update form (``node.update``) for one query."""
    update = node.update
    assert update is not None
    strategy, channels = update.strategy, node.schema.channels
    box_cells = update.box.area if update.box is not None else 0
    if strategy is Strategy.VIEW:
        return Cost()
    if strategy is Strategy.FULL:
        return naive_cost(node, inputs)
    if strategy is Strategy.PROJECT:
        return Cost(0, (node.schema.numel + _boxed_values(inputs[0])) * WORD)
    if strategy is Strategy.DELTA and isinstance(node.op, GlobalAvgPool):
        return Cost(0, (2 * _boxed_values(inputs[0]) + channels) * WORD)
    if strategy is Strategy.DELTA and isinstance(node.op, Linear):  # W's box columns times Δ
        boxed = _boxed_values(inputs[0])
        return Cost(channels * boxed, (2 * boxed + 2 * channels) * WORD)
    if strategy is Strategy.DELTA and isinstance(node.op, RegionSum):  # Δ, and W over the box
        read = 3 if node.op.weights is not None else 2
        return Cost(0, (read * _boxed_values(inputs[0]) + channels) * WORD)
    written = channels * box_cells
    if strategy in (Strategy.OCCLUDE, Strategy.ELEMENTWISE):
        moved = written + sum(_boxed_values(i) for i in inputs)
        return Cost(fma(node, box_cells), moved * WORD)  # FMAs: a per-position linear layer
    gathered = sum(i.schema.channels for i in inputs) * (
        update.read.area if update.read is not None else box_cells
    )
    work = fma(node, box_cells)
    if strategy is Strategy.DELTA:
        # Δ = patch − view over each input box, the zero window around it, view_out + op(Δ).
        differences = sum(2 * _boxed_values(i) for i in inputs)
        return Cost(work, (differences + gathered + 2 * written) * WORD)
    return Cost(work, (gathered + written) * WORD)  # recompute or bounding box


def _boxed_values(node: Node) -> int:
    """Values of ``node``'s output inside its update box (one query's)."""
    update = node.update
    if update is None or update.box is None:
        return 0
    return node.schema.channels * update.box.area


# -- per-query buffers: what the batching rule sizes batches by, and the kernels' limits --------


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
    return _boxed_values(node)


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


@dataclass(frozen=True, slots=True)
class PlanCost:
    """Whole-plan cost per query: naive re-inference against the rewritten plan."""

    naive: Cost
    incremental: Cost

    @property
    def speedup(self) -> float:
        """FMA ratio naive / incremental (the paper's theoretical speedup)."""
        return self.naive.fma / max(self.incremental.fma, 1)


def plan_cost(logical: Plan, rewritten: Plan) -> PlanCost:
    """Sum naive costs over the logical plan and incremental costs over the rewritten one."""
    naive, incremental = Cost(), Cost()
    for node in logical:
        naive += naive_cost(node, [logical[name] for name in node.inputs])
    for node in rewritten:
        incremental += incremental_cost(node, [rewritten[name] for name in node.inputs])
    return PlanCost(naive, incremental)
