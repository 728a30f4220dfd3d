"""Execution: materialize the clean image's views once, then run the batched delta plan over
batches of queries, with no Python loop over queries inside a batch."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from compiler.boxes import Origins, Positions
from compiler.ir import Constant, Input
from compiler.physical import PhysicalPlan
from compiler.types import Score
from runtime import full as full_ops
from runtime import memory
from runtime.backends import Runner, TorchRunner
from runtime.fill import Fill
from runtime.values import Batch, Env, Patch
from runtime.weights import Weights

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def materialize(plan: PhysicalPlan, images: Tensor, weights: Weights) -> dict[str, Tensor]:
    """One clean forward over every node; keep the views that some kernel reads."""
    values: dict[str, Tensor] = {}
    last_reader = {name: node.name for node in plan.nodes for name in node.inputs}
    for node in plan.nodes:
        if isinstance(node.op, Input):
            values[node.name] = images
        elif isinstance(node.op, Constant):
            tensor = weights[node.op.ref].to(images.dtype)
            values[node.name] = tensor.reshape(1, *node.schema.shape).expand(
                len(images), *node.schema.shape
            )
        else:
            values[node.name] = full_ops.full(node, [values[i] for i in node.inputs], weights)
        for name in dict.fromkeys(node.inputs):
            if last_reader[name] == node.name and name not in plan.views:
                del values[name]
    return {name: _gatherable(values[name]) for name in plan.views}


def _gatherable(view: Tensor) -> Tensor:
    """Feature-map views are stored channels-last: a gathered cell's channels are contiguous."""
    return view.contiguous(memory_format=torch.channels_last) if view.dim() == 4 else view


class Executor:
    """Runs a physical plan for every (image, position) query; reports scores per target."""

    def __init__(
        self,
        plan: PhysicalPlan,
        views: dict[str, Tensor],
        weights: Weights,
        origins: dict[str, Origins],
        positions: Positions,
        runner: Runner | None = None,
        fill: Fill | None = None,
    ):
        self.plan = plan
        self.runner = runner if runner is not None else TorchRunner()
        device = views[plan.output].device
        self._origins = {
            name: tuple(torch.as_tensor(a, device=device) for a in axes)
            for name, axes in origins.items()
        }
        self._starts = tuple(torch.as_tensor(a, device=device) for a in positions.starts)
        self._device = device
        self._positions = len(positions)
        self._env = Env(views, weights, Batch(torch.empty(0), (), {}), fill=fill)
        self.queries_run = 0

    def run(
        self,
        targets: Tensor,
        score: Score,
        batch_size: int,
        progress: Progress | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Scores ``[N, T, P]`` of the targets ``[N, T]`` at every position (or ``positions``)."""
        count = len(targets)
        chosen = positions if positions is not None else torch.arange(self._positions)
        chosen = chosen.to(self._device)
        total = count * len(chosen)
        scores = torch.full(
            (count * self._positions, targets.shape[1]),
            float("nan"),
            dtype=torch.float32,
            device=chosen.device,
        )
        start, size = 0, batch_size
        while start < total:
            index = torch.arange(start, min(start + size, total), device=chosen.device)
            image, position = index // len(chosen), chosen[index % len(chosen)]
            try:
                values = self._run_batch(image, position, targets, score)
            except Exception as error:  # an allocator's failure halves the batch
                if not memory.is_allocation_failure(error):
                    raise
                device = self._device
                if size == 1:
                    needed = self.plan.batching.bytes_per_query
                    raise memory.OutOfMemoryError(
                        f"out of {device.type} memory running one query (its buffers need "
                        f"about {needed:,} bytes at fp32): use a smaller image or patch, a lower "
                        "precision, or a device with more memory"
                    ) from None
                size = max(1, size // 2)
                log.warning("out of %s memory; retrying with batch size %d", device.type, size)
                continue
            scores[image * self._positions + position] = values
            start += len(index)
            self.queries_run += len(index)
            if progress is not None:
                progress(start, total)
        return scores.view(count, self._positions, -1).permute(0, 2, 1)

    def _run_batch(self, image: Tensor, position: Tensor, targets: Tensor, score: Score) -> Tensor:
        origins = {name: tuple(a[position] for a in axes) for name, axes in self._origins.items()}
        starts = tuple(a[position] for a in self._starts)
        self._env.batch = Batch(image, starts, origins, position)
        values: dict[str, Patch | Tensor | None] = {}
        for step in self.plan.steps:
            inputs = [values[name] for name in step.node.inputs]
            values[step.output.name] = self.runner.run(step, inputs, self._env)
            for name in step.frees:
                del values[name]
        output = values[self.plan.output]
        assert isinstance(output, Tensor), "the plan output must be a full per-query tensor"
        return select_scores(output, targets[image], score)


def select_scores(logits: Tensor, targets: Tensor, score: Score) -> Tensor:
    """Per-row scores of the target classes, in fp32 whatever the model's precision: softmax
    probabilities or the raw outputs."""
    logits = logits.float()
    values = torch.softmax(logits, dim=1) if score is Score.PROB else logits
    return values.gather(1, targets)
