"""A physical plan checked against what the Triton kernels can address and what a CUDA GPU will
launch — before the plan runs, so a plan a GPU would refuse fails when it is compiled, with a
message, and the executor never launches it.

Checked for every step the Triton backend runs, at the plan's batch size and for every
autotune config (the autotuner may try any): the grid (``compiler.limits.GRID``: at most
2³¹ − 1 programs in x, 65,535 in y and z) and the block (at most 1,024 threads); and, for
the kernels' 32-bit offsets, that every per-image view the kernels read and every batch buffer
holds at most ``compiler.limits.MAX_ELEMENTS`` values. The batching rule keeps batch buffers
under that bound, so only a plan whose single query or single image is too large fails here.
Shared memory per block is a property of the compiled kernel: the compile check
(``runtime.kernels.aot``) proves every config fits the H100's and A100's limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from compiler.cost import buffer_values, scratch_values
from compiler.errors import KryptonError
from compiler.ir import JoinAggregate, Node
from compiler.limits import GRID, MAX_ELEMENTS, MAX_THREADS
from compiler.physical import KernelId, PhysicalPlan, Step
from runtime.kernels.launch import Grid


def problems(physical: PhysicalPlan, *, cuda: bool) -> list[str]:
    """Every reason the Triton backend cannot run ``physical`` (``cuda``: also CUDA's grid and
    block limits, which the interpreter does not have)."""
    from runtime.backends import triton_launchers

    launched = triton_launchers()  # the steps the Triton backend runs with its kernels
    found = []
    for node in physical.nodes:
        if node.name in physical.views and node.schema.numel > MAX_ELEMENTS:
            found.append(
                f"the view of {node.name!r} holds {node.schema.numel:,} values per image, above "
                f"the kernels' 2³⁰ (32-bit offsets)"
            )
    batch = physical.batching.batch_size
    plan_nodes = {node.name: node for node in physical.nodes}
    for step in physical.steps:
        if step.kernel not in launched or step.launch is None:
            continue
        values = max(buffer_values(step.output), scratch_values(step.node, plan_nodes))
        if batch * values > MAX_ELEMENTS:
            found.append(
                f"step {step.node.name!r}: a batch buffer of {batch} × {values:,} values is "
                "above the kernels' 2³⁰ (32-bit offsets)"
            )
        if cuda:
            for kernel, grid, configs in _launches(step, batch, plan_nodes):
                found.extend(_launch_problems(step, kernel, grid, configs))
    return found


def check(physical: PhysicalPlan, *, cuda: bool) -> None:
    """Raise a ``KryptonError`` naming every problem ``problems`` finds."""
    found = problems(physical, cuda=cuda)
    if found:
        raise KryptonError(
            "the Triton backend cannot run this plan: "
            + "; ".join(found)
            + " — use backend='torch', a smaller image or a smaller patch"
        )


def _launches(
    step: Step, batch: int, nodes: dict[str, Node]
) -> Iterator[tuple[str, Grid, tuple[Any, ...]]]:
    """``(kernel, grid, configs)`` of each launch the step makes for ``batch`` queries."""
    from runtime.kernels import elementwise, gather_combine, gather_conv2d, gather_pool2d

    launch = step.launch
    assert launch is not None
    node = step.node
    if step.kernel is KernelId.GATHER_CONV:
        op = node.op
        assert isinstance(op, JoinAggregate)
        rows = batch * launch.m
        if op.in_channels == op.groups:  # one input channel per group: the weighted sum pool
            grid = gather_pool2d.programs(rows, op.out_channels)
            yield "gather_pool2d_kernel", grid, gather_pool2d.CONFIGS
        else:
            grid = gather_conv2d.programs(rows, launch.n, op.groups)
            yield "gather_conv2d_kernel", grid, gather_conv2d.CONFIGS
        return
    if step.kernel is KernelId.ELEMENTWISE:
        grid = elementwise.programs(batch * launch.m)
        yield "elementwise_kernel", grid, elementwise.CONFIGS
        return
    channels = node.schema.shape[0] if node.schema.shape else 1
    rows = batch * (launch.m // max(channels, 1))
    if step.kernel is KernelId.PROJECT:  # the whole map of each query
        rows = batch * (nodes[node.inputs[0]].schema.numel // max(channels, 1))
    if step.kernel is KernelId.GATHER_POOL:
        yield "gather_pool2d_kernel", gather_pool2d.programs(rows, channels), gather_pool2d.CONFIGS
    else:  # combine, concat (one launch per operand, each at most all channels), projection
        grid = gather_combine.programs(rows, channels)
        yield "gather_combine_kernel", grid, gather_combine.CONFIGS


def _launch_problems(step: Step, kernel: str, grid: Grid, configs: tuple[Any, ...]) -> list[str]:
    found = []
    for config in configs:
        programs = grid(config.kwargs)
        over = [
            f"{axis} = {count:,} > {limit:,}"
            for axis, count, limit in zip("xyz", programs, GRID)
            if count > limit
        ]
        if over:
            found.append(
                f"step {step.node.name!r}: {kernel} with {config.kwargs} needs a grid of "
                f"{', '.join(over)} (CUDA's limit)"
            )
        if config.num_warps * 32 > MAX_THREADS:
            found.append(f"{kernel} {config.kwargs}: {config.num_warps * 32} threads per block")
    return found
