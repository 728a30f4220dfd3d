"""torch.fx graph -> logical plan.

``import_model`` traces the model, propagates shapes with one forward on a zero image, and
translates every fx node with the tables in ``compiler.translators``. The image placeholder
becomes ``Input`` followed by the query's ``Occlude``; every consumer of the image reads the
occluded relation.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from compiler import translators
from compiler.errors import InvalidInputError, KryptonError, UnsupportedOperationError
from compiler.ir import Constant, Input, Node, Occlude, WeightRef
from compiler.plan import Plan
from compiler.types import Schema, Size2

log = logging.getLogger(__name__)

OCCLUDE = "occlude"
M = TypeVar("M", bound=nn.Module)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; a model fx cannot trace is a ``KryptonError``."""
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    training = [name or "<model>" for name, m in model.named_modules() if m.training]
    if training:
        raise InvalidInputError(
            f"the model is in training mode ({training[0]}); call model.eval() first"
        )
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # fx raises many kinds; all mean "not traceable"
        raise UnsupportedOperationError(
            f"torch.fx cannot trace the model ({type(error).__name__}: {error})"
        ) from error


class ImportContext:
    """What translators may ask about the traced model."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm

    def module(self, node: fx.Node, kind: type[M]) -> M:
        module = self.gm.get_submodule(str(node.target))
        assert isinstance(module, kind), (node.target, kind)
        return module

    def weight(self, path: str) -> WeightRef:
        tensor = _tensor_at(self.gm, path)
        return WeightRef(path, tuple(tensor.shape))

    def weight_of(self, node: fx.Node, value: Any) -> WeightRef:
        if isinstance(value, fx.Node) and value.op == "get_attr":
            return self.weight(str(value.target))
        raise UnsupportedOperationError(
            f"fx node {node.name!r}: weights must be model parameters, not computed values"
        )

    def schema(self, node: fx.Node) -> Schema:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise UnsupportedOperationError(f"fx node {node.name!r} does not produce one tensor")
        return Schema(tuple(int(d) for d in meta.shape[1:]))

    def is_batch_size(self, value: Any) -> bool:
        """Is ``value`` the fx node ``x.size(0)`` or ``x.shape[0]``?"""
        if not isinstance(value, fx.Node):
            return False
        if value.op == "call_method" and value.target == "size":
            return value.args[1:] == (0,) or value.kwargs.get("dim") == 0
        return False


def _tensor_at(gm: fx.GraphModule, path: str) -> torch.Tensor:
    owner, _, name = path.rpartition(".")
    module = gm.get_submodule(owner) if owner else gm
    tensor = getattr(module, name)
    if not isinstance(tensor, torch.Tensor):
        raise KryptonError(f"{path} is not a tensor")
    return tensor


def import_model(
    gm: fx.GraphModule, input_shape: tuple[int, int, int], patch: Size2, color: tuple[float, ...]
) -> Plan:
    """Translate a traced model into a logical plan for one image of ``input_shape``."""
    _propagate_shapes(gm, input_shape)
    ctx = ImportContext(gm)
    nodes: list[Node] = []
    names: dict[fx.Node, str] = {}
    output: str | None = None
    for fx_node in gm.graph.nodes:
        if fx_node.op == "placeholder":
            if any(isinstance(n.op, Input) for n in nodes):
                raise UnsupportedOperationError("the model takes more than one input")
            schema = Schema(tuple(input_shape))
            nodes.append(Node(fx_node.name, Input(), (), schema, source=fx_node.name))
            nodes.append(Node(OCCLUDE, Occlude(patch, color), (fx_node.name,), schema))
            names[fx_node] = OCCLUDE
        elif fx_node.op == "output":
            output = _output_of(fx_node, names)
        elif fx_node.op == "get_attr" or ctx.is_batch_size(fx_node):
            # Weights are read by their translators; a tensor used as data becomes a Constant
            # when a translator reads it as an input. Batch sizes are reshape metadata.
            continue
        else:
            nodes.extend(_translate(fx_node, ctx, names))
    assert output is not None
    plan = Plan(nodes, output)
    if len(plan[output].schema.shape) != 1:
        raise UnsupportedOperationError(
            f"the model's output has per-image shape {plan[output].schema.shape}; "
            "an occlusion heatmap needs class scores of shape [N, classes]"
        )
    plan.verify()
    return plan


def constant_schema(fx_node: fx.Node, ref: WeightRef, rank: int) -> Schema:
    """A model tensor used as data broadcasts against the value it meets, of ``rank`` axes with
    the batch (``[N, C, H, W]`` for a feature map, ``[N, K]`` for class scores): align it to
    that rank; its leading axis must be 1 (it cannot vary across the batch)."""
    shape = (1,) * (rank - len(ref.shape)) + ref.shape
    if len(shape) != rank or shape[0] != 1:
        raise UnsupportedOperationError(
            f"fx node {fx_node.name!r} uses tensor {ref.path} of shape {list(ref.shape)} as data; "
            "only tensors that broadcast over the batch (leading size 1) are supported"
        )
    return Schema(shape[1:])


def _translate(fx_node: fx.Node, ctx: ImportContext, names: dict[fx.Node, str]) -> list[Node]:
    """The node for ``fx_node``, preceded by Constants for model tensors it reads as data."""
    translator, source = _translator_for(fx_node, ctx)
    op, fx_inputs = translator(fx_node, ctx)
    schema = ctx.schema(fx_node)
    nodes = []
    for fx_input in fx_inputs:
        if fx_input not in names and getattr(fx_input, "op", None) == "get_attr":
            ref = ctx.weight(str(fx_input.target))
            rank = len(schema.shape) + 1  # the batch axis
            constant = constant_schema(fx_input, ref, rank)
            nodes.append(Node(fx_input.name, Constant(ref), (), constant, str(ref)))
            names[fx_input] = fx_input.name
        if fx_input not in names:
            raise UnsupportedOperationError(
                f"fx node {fx_node.name!r} reads {fx_input!r}, which is not a tensor"
            )
    nodes.append(Node(fx_node.name, op, tuple(names[i] for i in fx_inputs), schema, source))
    names[fx_node] = fx_node.name
    return nodes


def _translator_for(fx_node: fx.Node, ctx: ImportContext) -> tuple[translators.Translator, str]:
    if fx_node.op == "call_module":
        module = ctx.gm.get_submodule(str(fx_node.target))
        translator = translators.MODULES.get(type(module))
        source = f"{fx_node.target} ({type(module).__name__})"
    elif fx_node.op == "call_function":
        translator = translators.FUNCTIONS.get(fx_node.target)
        source = translators.target_name(fx_node)
    else:
        translator = translators.METHODS.get(str(fx_node.target))
        source = f".{fx_node.target}()"
    if translator is None:
        raise UnsupportedOperationError(
            f"fx node {fx_node.name!r} (target {source}) has no relational translation; "
            "supported are convolutions, pooling, batch norm, "
            "element-wise activations, add/mul, cat(dim=1), flatten, linear and softmax"
        )
    return translator, source


def _output_of(fx_node: fx.Node, names: dict[fx.Node, str]) -> str:
    value = fx_node.args[0]
    if isinstance(value, fx.Node) and value in names:
        return names[value]
    raise UnsupportedOperationError("the model must return one tensor of class scores")


def _propagate_shapes(gm: fx.GraphModule, input_shape: tuple[int, int, int]) -> None:
    parameter = next(iter(gm.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    sample = torch.zeros((1, *input_shape), device=device, dtype=dtype)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(sample)
    except Exception as error:
        root = error
        while root.__cause__ is not None:
            root = root.__cause__
        reason = (str(root).strip().splitlines() or [type(root).__name__])[0]
        raise InvalidInputError(
            f"the model does not accept inputs of shape {list(input_shape)}: {reason}"
        ) from error
