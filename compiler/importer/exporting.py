"""``export``: ``torch.export`` of a model at one input shape, after an eager check run that must
leave the model as it was (``probe``); what the exported program reads (``Exported.tensors``) and
what it must not do (write a buffer or parameter: ``written_state``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from compiler.errors import InvalidInputError, ModelInputError, UnsupportedOperationError
from compiler.importer.translators import bind


@dataclass
class Exported:
    """A model exported at one input shape, and the tensors its plan reads by name."""

    program: ExportedProgram
    model: nn.Module
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def export(model: nn.Module, input_shape: tuple[int, ...]) -> Exported:
    """``torch.export`` of ``model`` for one image of ``input_shape``; a model that does not
    run at that shape, or that export cannot capture, is a ``KryptonError``."""
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    training = [name or "<model>" for name, m in model.named_modules() if m.training]
    if training:
        raise InvalidInputError(
            f"the model is in training mode ({training[0]}); call model.eval() first"
        )
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    sample = torch.zeros((1, *input_shape), device=device, dtype=dtype)
    try:
        probe(model, sample)
    except UnsupportedOperationError:
        raise
    except Exception as error:
        raise ModelInputError(
            f"the model does not accept inputs of shape {list(input_shape)}: {_reason(error)}"
        ) from error
    try:
        with _without_stack_traces():
            program = torch.export.export(model, (sample,))
    except Exception as error:  # export raises many kinds; all mean "cannot be captured"
        raise UnsupportedOperationError(
            f"torch.export cannot capture the model ({type(error).__name__}): "
            f"{_export_reason(str(error))}"
        ) from error
    return Exported(program, model, _model_tensors(program))


@contextlib.contextmanager
def _without_stack_traces() -> Iterator[None]:
    """Export without recording each node's Python stack (``node.meta["stack_trace"]``, which
    nothing here reads): symbolizing them was about 10% of ResNet18's export and a fifth of a
    small model's. Module paths (``nn_module_stack``) are kept."""
    config: Any = getattr(fx, "config", None)
    before = getattr(config, "do_not_emit_stack_traces", None)
    if config is None or before is None:  # a torch without the switch
        yield
        return
    config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        config.do_not_emit_stack_traces = before


def probe(model: nn.Module, sample: torch.Tensor) -> Any:
    """``model(sample)`` without gradients, leaving the model as it was: a forward that changes
    a buffer or parameter in place has its buffers put back and is refused (each forward would
    see another model, so no heatmap of it is well defined)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    # A lazy module's first forward materializes its parameters: that is no change of state.
    state = {name: (t, _version(t)) for name, t in tensors if not nn.parameter.is_lazy(t)}
    saved = {n: b.clone() for n, b in model.named_buffers() if not nn.parameter.is_lazy(b)}
    with torch.no_grad():
        result = model(sample)
    changed = [name for name, (tensor, version) in state.items() if _version(tensor) != version]
    if changed:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in saved:
                    buffer.copy_(saved[name])
        raise UnsupportedOperationError(
            f"the model changes its buffer or parameter {changed[0]} when it runs: each "
            "forward would see another model, so no heatmap of it is well defined"
        )
    return result


def _version(tensor: torch.Tensor) -> int:
    try:
        return int(tensor._version)
    except RuntimeError:  # an inference tensor keeps no version (and cannot be written)
        return 0


def _export_reason(text: str) -> str:
    """Export's first line and the model's source line it points at."""
    lines = text.strip().splitlines()
    where = next((i for i, line in enumerate(lines) if "call raised this error" in line), None)
    if where is None:
        return "\n".join(lines[:6])
    source = [line.rstrip() for line in lines[where + 1 : where + 3] if line.strip()]
    return "\n".join([lines[0], "at", *source])


def _reason(error: Exception) -> str:
    root: BaseException = error
    while root.__cause__ is not None:
        root = root.__cause__
    return (str(root).strip().splitlines() or [type(root).__name__])[0]


def _model_tensors(program: ExportedProgram) -> dict[str, torch.Tensor]:
    tensors = {}
    for spec in program.graph_signature.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            assert spec.target is not None
            source = program.state_dict if spec.target in program.state_dict else program.constants
            tensor = source[spec.target]
            assert isinstance(tensor, torch.Tensor), spec.target
            tensors[spec.target] = tensor.detach()
    return tensors


def _is_view(target: Any) -> bool:
    if not isinstance(target, torch._ops.OpOverload):
        return target.__name__ == "getitem" if hasattr(target, "__name__") else False
    schema = target._schema
    return not schema.is_mutable and any(r.alias_info is not None for r in schema.returns)


def writes_through_views(graph: fx.Graph) -> bool:
    """Does an in-place operator write a tensor that another tensor views?"""
    for node in graph.nodes:
        target = node.target
        if not (isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable):
            continue
        if "dropout" in target.overloadpacket.__name__ and not bind(
            target, node.args, node.kwargs
        ).get("train"):
            continue  # in-place dropout at inference writes nothing
        written = node.args[0]
        if not isinstance(written, fx.Node):
            continue
        if written.op == "call_function" and _is_view(written.target):
            return True
        if any(
            u is not node and u.op == "call_function" and _is_view(u.target) for u in written.users
        ):
            return True
    return False


def written_state(program: ExportedProgram) -> list[str]:
    """The parameters, buffers and constants an in-place operator in the graph writes (through
    views too): export keeps such writes in its graph without listing them as mutations."""
    kinds = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
    state = {
        spec.arg.name: str(spec.target)
        for spec in program.graph_signature.input_specs
        if spec.kind in kinds and hasattr(spec.arg, "name")
    }
    written = []
    for node in program.graph.nodes:
        target = node.target
        if not (isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable):
            continue
        for position, argument in enumerate(target._schema.arguments):
            if argument.alias_info is None or not argument.alias_info.is_write:
                continue
            value = node.args[position] if position < len(node.args) else node.kwargs.get(
                argument.name
            )  # fmt: skip
            while isinstance(value, fx.Node) and value.op == "call_function" and _is_view(
                value.target
            ):  # fmt: skip
                value = value.args[0]
            if isinstance(value, fx.Node) and value.op == "placeholder" and value.name in state:
                written.append(state[value.name])
    return written
