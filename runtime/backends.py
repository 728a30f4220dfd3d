"""Backends: what runs each step of a physical plan.

``torch`` is the reference backend (``runtime.reference``: every ``KernelId``, epilogue nodes
one by one). ``triton`` runs the fused kernels of ``runtime.kernels`` — gather-convolution,
gather-pooling, gather-combine/concat/projection and element-wise, each applying the step's
folded epilogue before it stores — and the reference for the rest. Each convolution runs either
the fused kernel or a gather + cuDNN (``F.conv2d``), chosen by timing both on the first batch of
each shape (on a GPU; the interpreter always runs the fused kernel); ``choices`` records what
ran, and explain shows it. On CPU tensors Triton kernels run in the interpreter (for tests).
"""

from __future__ import annotations

import enum
import importlib.util
import logging
import time
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from compiler.errors import InvalidInputError
from compiler.ir import Combine, Concat, JoinAggregate, Node, Pool
from compiler.physical import KernelId, Step
from compiler.types import Agg
from runtime import reference
from runtime.reference import KERNELS
from runtime.values import Env, Patch, Value, read_origin

log = logging.getLogger(__name__)


class Backend(enum.Enum):
    AUTO = "auto"  # triton on CUDA, torch on the CPU
    TORCH = "torch"
    TRITON = "triton"


class ConvChoice(enum.Enum):
    MEASURE = "measure"  # time both on the first batch of each shape (GPU only)
    TRITON = "triton"  # the fused gather-convolution kernel
    CUDNN = "cudnn"  # gather into a window buffer, then F.conv2d


def resolve(backend: Backend, device_type: str) -> Backend:
    """The backend that runs on ``device_type``; prepares Triton's interpreter for CPU tensors."""
    has_triton = importlib.util.find_spec("triton") is not None
    if backend is Backend.AUTO:
        if device_type == "cuda" and not has_triton:
            log.warning("triton is not installed: running the torch reference backend on CUDA")
        return Backend.TRITON if device_type == "cuda" and has_triton else Backend.TORCH
    if backend is Backend.TRITON:
        if not has_triton:
            raise InvalidInputError("backend='triton' needs the triton package")
        if device_type == "cpu":
            _interpreter()
    return backend


def _interpreter() -> None:
    """Kernels on CPU tensors run in Triton's interpreter, which must be on before Triton is
    imported (its own library functions are compiled then): Triton's own setting says."""
    from triton import knobs  # Triton reads TRITON_INTERPRET; the library does not

    if not knobs.runtime.interpret:
        raise InvalidInputError(
            "backend='triton' on CPU tensors runs Triton's interpreter (slow; meant for tests): "
            "set TRITON_INTERPRET=1 in the environment before starting Python, or use "
            "backend='torch' (the default on the CPU)"
        )


class Runner(Protocol):
    choices: dict[str, str]

    def run(self, step: Step, inputs: list[Value], env: Env) -> Value: ...

    def describe(self) -> str: ...


class TorchRunner:
    """The reference: the step's kernel, then each epilogue node."""

    def __init__(self) -> None:
        self.choices: dict[str, str] = {}

    def run(self, step: Step, inputs: list[Value], env: Env) -> Value:
        value = KERNELS[step.kernel](step.node, inputs, env)
        for node in step.epilogue:
            value = KERNELS[KernelId.ELEMENTWISE](node, [value], env)
        return value

    def describe(self) -> str:
        return "torch reference"


class TritonRunner(TorchRunner):
    """Fused Triton kernels where one exists, the reference elsewhere."""

    FUSED = (
        KernelId.GATHER_CONV2D,
        KernelId.GATHER_POOL2D,
        KernelId.GATHER_COMBINE,
        KernelId.GATHER_CONCAT,
        KernelId.PROJECT,
        KernelId.ELEMENTWISE,
    )

    def __init__(self, conv: ConvChoice = ConvChoice.MEASURE) -> None:
        super().__init__()
        self.conv = conv
        self._segments: dict[str, list] = {}
        self._measured: dict[tuple, str] = {}

    def describe(self) -> str:
        names = ", ".join(k.value for k in self.FUSED)
        how = {
            ConvChoice.MEASURE: "fused or cuDNN per shape, by measurement",
            ConvChoice.TRITON: "fused",
            ConvChoice.CUDNN: "gather + cuDNN",
        }[self.conv]
        return f"triton ({names}; convolutions: {how}); torch reference for the others"

    def run(self, step: Step, inputs: list[Value], env: Env) -> Value:
        from runtime.kernels.epilogue import IDENTITY, Epilogue

        segments = self._epilogue(step, env)
        if step.kernel is KernelId.ELEMENTWISE:  # the head is an element-wise node too
            value, rest = inputs[0], segments
        elif step.kernel in self.FUSED:
            first = segments[0] if segments and isinstance(segments[0], Epilogue) else IDENTITY
            rest = segments[1:] if first is not IDENTITY else segments
            value = self._fused(step, inputs, env, first)
        else:
            value, rest = KERNELS[step.kernel](step.node, inputs, env), segments
        for segment in rest:
            value = _apply(segment, value, env)
        return value

    def _epilogue(self, step: Step, env: Env) -> list:
        """The step's element-wise nodes folded into segments (cached per step)."""
        from runtime.kernels.epilogue import fold

        segments = self._segments.get(step.node.name)
        if segments is None:
            nodes = step.epilogue
            if step.kernel is KernelId.ELEMENTWISE:
                nodes = (step.node, *nodes)
            if nodes:
                device = env.views[next(iter(env.views))].device
                segments = fold(nodes, env.weights, step.output.schema.shape[0], device)
            else:
                segments = []
            self._segments[step.node.name] = segments
        return segments

    def _fused(self, step: Step, inputs: list[Value], env: Env, epilogue) -> Value:
        kernel = step.kernel
        if kernel is KernelId.GATHER_CONV2D:
            return self._conv(step, inputs, env, epilogue)
        if kernel is KernelId.GATHER_POOL2D:
            return _pool(step.node, inputs, env, epilogue)
        if kernel is KernelId.GATHER_COMBINE:
            return _combine(step.node, inputs, env, epilogue)
        if kernel is KernelId.GATHER_CONCAT:
            return _concat(step.node, inputs, env, epilogue)
        return _project(step.node, inputs, env)

    def _conv(self, step: Step, inputs: list[Value], env: Env, epilogue) -> Value:
        choice = self.conv
        if choice is ConvChoice.MEASURE:
            if env.views[step.node.inputs[0]].device.type != "cuda":
                choice = ConvChoice.TRITON
            else:
                choice = self._measure(step, inputs, env, epilogue)
        self.choices[step.node.name] = choice.value
        if choice is ConvChoice.TRITON:
            return _conv_fused(step.node, inputs, env, epilogue)
        return _apply(epilogue, KERNELS[KernelId.GATHER_CONV2D](step.node, inputs, env), env)

    def _measure(self, step: Step, inputs: list[Value], env: Env, epilogue) -> ConvChoice:
        """Time the fused kernel and gather + cuDNN on this batch; remember the faster per
        shape (convolution, box, batch size, dtype)."""
        node, patch = step.node, inputs[0]
        assert isinstance(node.op, JoinAggregate) and isinstance(patch, Patch)
        key = (node.op, node.update, tuple(patch.values.shape), patch.values.dtype)
        known = self._measured.get(key)
        if known is None:
            fused = lambda: _conv_fused(node, inputs, env, epilogue)  # noqa: E731
            cudnn = lambda: _apply(  # noqa: E731
                epilogue, KERNELS[KernelId.GATHER_CONV2D](node, inputs, env), env
            )
            times = {"triton": _time(fused), "cudnn": _time(cudnn)}
            known = self._measured[key] = min(times, key=times.__getitem__)
            log.info(
                "%s: fused %.3f ms, gather + cuDNN %.3f ms → %s",
                node.name,
                times["triton"] * 1e3,
                times["cudnn"] * 1e3,
                known,
            )
        return ConvChoice(known)


def _time(function: Callable[[], object], repeat: int = 3) -> float:
    """Seconds per call on the GPU, after one warm-up call (which also autotunes)."""
    function()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def _apply(segment, value: Value, env: Env) -> Value:
    """One epilogue segment (a folded ``Epilogue`` or a plain node) on a boxed value."""
    from runtime.kernels.elementwise import elementwise
    from runtime.kernels.epilogue import IDENTITY, Epilogue

    if segment is IDENTITY:
        return value
    assert isinstance(value, Patch)
    if isinstance(segment, Epilogue):
        return Patch(elementwise(value.values, segment), value.y0, value.x0)
    return KERNELS[KernelId.ELEMENTWISE](segment, [value], env)


def _window_geometry(node: Node, inputs: list[Value], env: Env):
    """A window operator's boxed input, per-query output origins, read-in origins and box."""
    (patch,) = inputs
    assert isinstance(patch, Patch) and node.update is not None and node.update.box is not None
    origin = env.batch.origins[node.name]
    return patch, origin, read_origin(node, origin), node.update.box


def _conv_fused(node: Node, inputs: list[Value], env: Env, epilogue) -> Value:
    from runtime.kernels.gather_conv2d import gather_conv2d

    op = node.op
    assert isinstance(op, JoinAggregate)
    patch, (y0, x0), (read_y, read_x), box = _window_geometry(node, inputs, env)
    window = op.window
    values = gather_conv2d(
        env.views[node.inputs[0]],
        patch.values,
        env.batch.image,
        read_y,
        read_x,
        patch.y0,
        patch.x0,
        env.weights[op.weight],
        env.weights.get(op.bias),
        (window.stride.h, window.stride.w),
        (window.dilation.h, window.dilation.w),
        op.groups,
        (box.h, box.w),
        epilogue,
    )
    return Patch(values, y0, x0)


def _pool(node: Node, inputs: list[Value], env: Env, epilogue) -> Value:
    from runtime.kernels.gather_pool2d import gather_pool2d

    op = node.op
    assert isinstance(op, Pool)
    patch, (y0, x0), (read_y, read_x), box = _window_geometry(node, inputs, env)
    window = op.window
    divisor: float | tuple[Tensor, Tensor, Tensor] = float(window.kernel.area)
    if op.divisor_override is not None:
        divisor = float(op.divisor_override)
    elif op.agg is Agg.AVG and not reference.constant_divisor(op):
        divisor = (reference.divisor_map(node, env)[0, 0], y0, x0)
    values = gather_pool2d(
        env.views[node.inputs[0]],
        patch.values,
        env.batch.image,
        read_y,
        read_x,
        patch.y0,
        patch.x0,
        (window.kernel.h, window.kernel.w),
        (window.stride.h, window.stride.w),
        (window.dilation.h, window.dilation.w),
        (box.h, box.w),
        is_max=op.agg is Agg.MAX,
        divisor=divisor,
        epilogue=epilogue,
    )
    return Patch(values, y0, x0)


def _operands(node: Node, inputs: list[Value], env: Env) -> list:
    operands = []
    for name, value in zip(node.inputs, inputs):
        source = env.views[name]
        if value is None and source.shape[1:] != node.schema.shape:
            source = source.expand(-1, *node.schema.shape)  # a broadcast clean operand
        if isinstance(value, Patch):
            operands.append((source, value.values, value.y0, value.x0))
        else:
            operands.append((source, None, None, None))
    return operands


def _combine(node: Node, inputs: list[Value], env: Env, epilogue) -> Value:
    from runtime.kernels.gather_combine import gather_combine

    assert isinstance(node.op, Combine) and node.update is not None and node.update.box
    y0, x0 = env.batch.origins[node.name]
    box = node.update.box
    values = gather_combine(
        _operands(node, inputs, env),
        env.batch.image,
        y0,
        x0,
        (box.h, box.w),
        node.op.arith,
        epilogue=epilogue,
    )
    return Patch(values, y0, x0)


def _concat(node: Node, inputs: list[Value], env: Env, epilogue) -> Value:
    from runtime.kernels.gather_combine import gather_combine

    assert isinstance(node.op, Concat) and node.update is not None and node.update.box
    y0, x0 = env.batch.origins[node.name]
    box = node.update.box
    view = env.views[node.inputs[0]]
    out = torch.empty(
        len(y0), node.schema.shape[0], box.h, box.w, device=y0.device, dtype=view.dtype
    )
    start = 0
    for operand in _operands(node, inputs, env):
        stop = start + operand[0].shape[1]
        gather_combine(
            [operand],
            env.batch.image,
            y0,
            x0,
            (box.h, box.w),
            epilogue=epilogue.slice(start, stop),
            out=out[:, start:stop],
        )
        start = stop
    return Patch(out, y0, x0)


def _project(node: Node, inputs: list[Value], env: Env) -> Value:
    from runtime.kernels.gather_combine import gather_combine

    (patch,) = inputs
    assert isinstance(patch, Patch)
    view = env.views[node.inputs[0]]
    zeros = torch.zeros_like(patch.y0)
    operand = (view, patch.values, patch.y0, patch.x0)
    return gather_combine([operand], env.batch.image, zeros, zeros, tuple(view.shape[2:]))


def runner_for(backend: Backend, conv: ConvChoice = ConvChoice.MEASURE) -> Runner:
    """A fresh runner of a (resolved) backend."""
    return TritonRunner(conv) if backend is Backend.TRITON else TorchRunner()
