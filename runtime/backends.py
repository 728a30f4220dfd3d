"""Backends: what runs each step of a physical plan, as tables ``KernelId → launcher``.

``torch`` is the reference backend (``runtime.reference.KERNELS``: every ``KernelId``, epilogue
nodes one by one). ``triton`` (``TRITON_LAUNCHERS``) runs the fused kernels of
``runtime.kernels`` — gather-convolution, gather-pooling, gather-combine/concat/projection and
element-wise, each adapter beside its kernel, each applying the step's folded epilogue before
it stores — and the reference for the rest. Each convolution runs the fused kernel or a
gather + cuDNN (``runtime.measure``); ``choices`` records what ran, and explain shows it.
Which backend runs where: ``runtime.resolve``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from compiler.ir import JoinAggregate
from compiler.physical import KernelId, Step
from runtime.measure import ConvChoice, ConvMeasurements
from runtime.reference import KERNELS
from runtime.resolve import Backend
from runtime.values import Env, Patch, Value

Launcher = Callable[..., Value]  # (node, inputs, env, epilogue) -> value


class Runner(Protocol):
    choices: dict[str, ConvChoice]

    def run(self, step: Step, inputs: list[Value], env: Env) -> Value: ...

    def describe(self) -> str: ...


class TorchRunner:
    """The reference: the step's kernel, then each epilogue node."""

    def __init__(self) -> None:
        self.choices: dict[str, ConvChoice] = {}

    def run(self, step: Step, inputs: list[Value], env: Env) -> Value:
        value = KERNELS[step.kernel](step.node, inputs, env)
        for node in step.epilogue:
            value = KERNELS[KernelId.ELEMENTWISE](node, [value], env)
        return value

    def describe(self) -> str:
        return "torch reference"


def is_planar(step: Step) -> bool:
    """Whether a step's maps have two spatial axes (what the Triton kernels take); a step of
    a 1-D or 3-D map runs on the torch reference in every backend."""
    schema = step.node.schema
    return not schema.is_spatial or schema.d == 2


def triton_launchers() -> dict[KernelId, Launcher]:
    """The Triton backend's table (imported on first use: Triton is optional)."""
    from runtime.kernels import elementwise, gather_combine, gather_conv2d, gather_pool2d

    return {
        KernelId.GATHER_CONV: gather_conv2d.launch,
        KernelId.GATHER_POOL: gather_pool2d.launch,
        KernelId.GATHER_COMBINE: gather_combine.launch_combine,
        KernelId.GATHER_CONCAT: gather_combine.launch_concat,
        KernelId.PROJECT: gather_combine.launch_project,
        KernelId.ELEMENTWISE: elementwise.launch,
    }


class TritonRunner(TorchRunner):
    """Fused Triton kernels where the table has one, the reference elsewhere."""

    def __init__(self, conv: ConvChoice = ConvChoice.MEASURE) -> None:
        super().__init__()
        from runtime.kernels import elementwise

        self.conv = conv
        self.launchers = triton_launchers()
        self._segment = elementwise.apply_segment
        self._segments: dict[str, list[Any]] = {}
        self._measurements = ConvMeasurements()

    def describe(self) -> str:
        names = ", ".join(k.value for k in self.launchers)
        how = {
            ConvChoice.MEASURE: "fused or cuDNN per shape, by measurement",
            ConvChoice.TRITON: "fused",
            ConvChoice.CUDNN: "gather + cuDNN",
        }[self.conv]
        return f"triton ({names}; convolutions: {how}); torch reference for the others"

    def run(self, step: Step, inputs: list[Value], env: Env) -> Value:
        from runtime.kernels.epilogue import IDENTITY, Epilogue

        if not is_planar(step):  # the kernels are 2-D: other ranks run on the reference
            return super().run(step, inputs, env)
        segments = self._epilogue(step, env)
        launcher = self.launchers.get(step.kernel)
        if launcher is None:
            value, rest = KERNELS[step.kernel](step.node, inputs, env), segments
        else:  # the first folded segment runs inside the kernel
            first = segments[0] if segments and isinstance(segments[0], Epilogue) else IDENTITY
            rest = segments[1:] if first is not IDENTITY else segments
            if step.kernel is KernelId.GATHER_CONV:
                value = self._conv(step, inputs, env, first)
            else:
                value = launcher(step.node, inputs, env, first)
        for segment in rest:
            value = self._segment(segment, value, env)
        return value

    def _epilogue(self, step: Step, env: Env) -> list[Any]:
        """The step's element-wise nodes folded into segments (cached per step); an
        element-wise step's own node is the first."""
        from runtime.kernels.epilogue import fold

        segments = self._segments.get(step.node.name)
        if segments is None:
            nodes = step.epilogue
            if step.kernel is KernelId.ELEMENTWISE:
                nodes = (step.node, *nodes)
            segments = []
            if nodes:
                device = env.views[next(iter(env.views))].device
                segments = fold(nodes, env.weights, step.output.schema.shape[0], device)
            self._segments[step.node.name] = segments
        return segments

    def _conv(self, step: Step, inputs: list[Value], env: Env, epilogue: Any) -> Value:
        node = step.node

        def fused() -> Value:
            return self.launchers[KernelId.GATHER_CONV](node, inputs, env, epilogue)

        def cudnn() -> Value:
            return self._segment(epilogue, KERNELS[KernelId.GATHER_CONV](node, inputs, env), env)

        choice = self.conv
        if choice is ConvChoice.MEASURE:
            if env.views[node.inputs[0]].device.type != "cuda":
                choice = ConvChoice.TRITON  # the interpreter: nothing to measure
            else:
                patch = inputs[0]
                assert isinstance(node.op, JoinAggregate) and isinstance(patch, Patch)
                key = (node.op, node.update, tuple(patch.values.shape), patch.values.dtype)
                choice = self._measurements.choose(node.name, key, fused, cudnn)
        self.choices[node.name] = choice
        return fused() if choice is ConvChoice.TRITON else cudnn()


def runner_for(backend: Backend, conv: ConvChoice = ConvChoice.MEASURE) -> Runner:
    """A fresh runner of a (resolved) backend."""
    return TritonRunner(conv) if backend is Backend.TRITON else TorchRunner()
