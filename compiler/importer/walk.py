"""The walk over an exported graph that makes the logical plan (``import_model``), and
``ImportContext``, what translators may ask of it (``compiler.importer.context.Context``)."""

from __future__ import annotations

import logging
import math
from typing import Any, cast

import torch
from torch import fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from compiler.errors import UnsupportedOperationError
from compiler.importer.exporting import Exported, writes_through_views, written_state
from compiler.importer.fallback import SHAPE_ARGUMENTS, Deferred, FallbackProgram, batch_in_front
from compiler.importer.translators import (
    ATEN,
    NotLocal,
    Outputs,
    Translation,
    Value,
    bind,
    generic,
    op_name,
    unsupported,
)
from compiler.ir import (
    Arg,
    Aten,
    Call,
    Constant,
    Flatten,
    Input,
    Node,
    Occlude,
    Operator,
    WeightRef,
)
from compiler.plan import Plan
from compiler.types import Layout, Schema, Size

log = logging.getLogger(__name__)


OCCLUDE = "occlude"


SKIPPED = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size"}


def import_model(
    exported: Exported, input_shape: tuple[int, ...], patch: Size, color: tuple[float, ...]
) -> Plan:
    """Translate an exported model into a logical plan for one image of ``input_shape``."""
    program = exported.program
    signature = program.graph_signature
    mutated = list(signature.buffers_to_mutate.values()) or written_state(program)
    if mutated:
        raise UnsupportedOperationError(
            f"the model changes its buffer or parameter {mutated[0]} when it runs: each "
            "forward would see another model, so no heatmap of it is well defined"
        )
    if writes_through_views(program.graph):
        program = program.run_decompositions({})
    ctx = ImportContext(exported, program)
    ctx.walk(tuple(input_shape), patch, color)
    plan = Plan(ctx.nodes, ctx.output)
    if len(plan[ctx.output].schema.shape) != 1:
        raise UnsupportedOperationError(
            f"the model's output has per-image shape {list(plan[ctx.output].schema.shape)}; "
            "an occlusion heatmap needs class scores of shape [N, classes]"
        )
    plan.verify()
    return plan


def _functional(node: fx.Node) -> torch._ops.OpOverload:
    target = node.target
    assert isinstance(target, torch._ops.OpOverload)
    name = target.overloadpacket.__name__
    packet = getattr(torch.ops.aten, name[:-1], None) if name.endswith("_") else None
    overload = getattr(packet, target._overloadname, None) if packet is not None else None
    if not isinstance(overload, torch._ops.OpOverload):
        raise unsupported(node, "an in-place operator with no functional form")
    return overload


class ImportContext:
    """The state of one import, and what translators may ask of it."""

    def __init__(self, exported: Exported, program: ExportedProgram):
        self.exported, self.program = exported, program
        self.tensors = exported.tensors
        # Per exported node: its Value or Outputs, a Deferred fallback call, or a submodule
        # (autocast's graph) — what later nodes read it as.
        self.values: dict[fx.Node, Any] = {}
        self.nodes: list[Node] = []
        self.output = ""
        self._used: set[str] = set()
        self._constants: dict[tuple[str, tuple[int, ...]], str] = {}  # (tensor, shape) -> node
        self._fallbacks: set[str] = set()

    # -- the walk ---------------------------------------------------------------------------

    def walk(self, input_shape: tuple[int, ...], patch: Size, color: tuple[float, ...]) -> None:
        specs = {spec.arg.name: spec for spec in self.program.graph_signature.input_specs}
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node, specs[node.name], input_shape, patch, color)
            elif node.op == "output":
                self.output = self._output(node)
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "get_attr":  # a higher-order operator's subgraph
                self.values[node] = getattr(self.program.graph_module, str(node.target))
            else:
                raise UnsupportedOperationError(f"exported node {node.name!r} ({node.op})")

    def _placeholder(
        self,
        node: fx.Node,
        spec: Any,
        shape: tuple[int, ...],
        patch: Size,
        color: tuple[float, ...],
    ) -> None:
        if spec.kind is InputKind.USER_INPUT:
            if any(isinstance(n.op, Input) for n in self.nodes):
                raise UnsupportedOperationError("the model takes more than one input")
            schema = Schema(tuple(shape))
            self._used.update({node.name, OCCLUDE})
            self.nodes.append(Node(node.name, Input(), (), schema, source=node.name))
            self.nodes.append(Node(OCCLUDE, Occlude(patch, color), (node.name,), schema))
            self.values[node] = Value(OCCLUDE, tuple(shape), Layout.standard(tuple(shape)))
        elif spec.target in self.tensors:
            tensor = self.tensors[spec.target]
            self.values[node] = Value(
                None, tuple(tensor.shape), None, tensor, WeightRef(spec.target, tuple(tensor.shape))
            )
        else:
            raise UnsupportedOperationError(f"the model has an input of kind {spec.kind.name}")

    def _output(self, node: fx.Node) -> str:
        results: Any = node.args[0]  # the output node's tuple of results
        if len(results) != 1 or not isinstance(results[0], fx.Node):
            raise UnsupportedOperationError("the model must return one tensor of class scores")
        value = self.values.get(results[0])
        if isinstance(value, Deferred):
            raise UnsupportedOperationError(
                "the model's output does not have the batch axis first; an occlusion heatmap "
                "needs class scores of shape [N, classes]"
            )
        if not isinstance(value, Value) or value.is_constant:
            raise UnsupportedOperationError("the model's output does not depend on the image")
        if value.is_spatial:
            raise UnsupportedOperationError(
                f"the model's output has per-image shape {list(value.shape)}; an occlusion "
                "heatmap needs class scores of shape [N, classes]"
            )
        assert value.name is not None
        if value.shape == ():  # one score per image (Captum's usual wrapper): one class
            name = self._unique(f"{value.name}_scores")
            schema = Schema((1,), spatial=False)
            self.nodes.append(Node(name, Flatten(), (value.name,), schema, "[N] as [N, 1]"))
            return name
        return value.name

    def _call(self, node: fx.Node) -> None:
        target = node.target
        if getattr(target, "__name__", None) == "getitem":
            source, index = cast(tuple[fx.Node, int], node.args)
            produced = self.values[source]
            if isinstance(produced, Outputs):
                try:
                    self.values[node] = produced.item(node, int(index))
                except NotLocal as why:
                    assert isinstance(source, fx.Node)
                    target = source.target
                    if isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable:
                        target = _functional(source)
                    self.values[node] = self.fallback(
                        source, target, str(why), item=int(index), at=node
                    )
                return
            raise unsupported(node, "indexing a single tensor with getitem")
        if getattr(target, "__name__", None) == "wrap_with_autocast":
            self.values[node] = self._inline_autocast(node)
            return
        if not isinstance(target, torch._ops.OpOverload):
            raise unsupported(node, "not an ATen operator (a higher-order operator?)")
        name = target.overloadpacket.__name__
        if name in SKIPPED:
            return
        if target._schema.is_mutable:
            target = _functional(node)
        args = bind(target, node.args, node.kwargs)
        args = {k: self._lookup(v) for k, v in args.items()}
        if not any(_depends_on_image(v) for v in args.values()):
            result: Translation | Deferred = self._fold(node, target, args)
        else:
            result = self._translate(node, target, args)
        self.values[node] = result

    def _inline_autocast(self, node: fx.Node) -> Outputs:
        """``with torch.autocast(..., enabled=False)``: the region computes in the model's own
        dtypes, so its subgraph is translated in place."""
        _device, _dtype, enabled, _cache, submodule, *inputs = cast(tuple[Any, ...], node.args)
        if enabled:
            raise unsupported(
                node,
                "an autocast region inside the model (mixed precision); compile with "
                "precision='bf16' or 'fp16' instead",
            )
        graph = self.values[submodule].graph
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        for placeholder, value in zip(placeholders, inputs, strict=True):
            self.values[placeholder] = self.values[value]
        results: tuple[fx.Node, ...] = ()
        for inner in graph.nodes:
            if inner.op == "call_function":
                self._call(inner)
            elif inner.op == "output":
                results = tuple(inner.args[0])
        values = [self.values[r] for r in results]
        return Outputs(lambda getitem, index: values[index])

    def _lookup(self, value: Any) -> Any:
        if isinstance(value, fx.Node):
            found = self.values.get(value)
            if found is None:
                raise UnsupportedOperationError(f"exported node {value.name!r} has no value")
            return found
        if isinstance(value, (list, tuple)):
            return type(value)(self._lookup(v) for v in value)
        return value

    def _translate(
        self, node: fx.Node, target: Any, args: dict[str, Any]
    ) -> Translation | Deferred:
        name = target.overloadpacket.__name__
        translator = ATEN.get(name)
        if _has_deferred(args):
            return self.fallback(node, target, "reads a tensor whose batch axis was moved")
        try:
            return (translator or generic)(node, args, self)
        except NotLocal as why:
            return self.fallback(node, target, str(why))

    def _fold(self, node: fx.Node, target: Any, args: dict[str, Any]) -> Translation:
        """Compute a node of model tensors only, once, at import."""

        def real(value: Any) -> Any:
            if isinstance(value, Value):
                return value.tensor
            if isinstance(value, (list, tuple)):
                return type(value)(real(v) for v in value)
            return value

        positional, keywords = _split(target, {k: real(v) for k, v in args.items()})
        with torch.no_grad():
            result = target(*positional, **keywords)
        if isinstance(result, (tuple, list)):
            items = [_constant(r, f"<{node.name}[{i}]>") for i, r in enumerate(result)]
            return Outputs(lambda getitem, index: items[index])
        assert isinstance(result, torch.Tensor), node
        return _constant(result, f"<{node.name}>")

    # -- what translators ask ------------------------------------------------------------------

    def out_shape(self, node: fx.Node) -> tuple[int, ...]:
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise UnsupportedOperationError(f"exported node {node.name!r} is not one tensor")
        return tuple(int(d) for d in value.shape[1:])

    def like(self, node: fx.Node, value: Value) -> Layout | None:
        """``value``'s layout for ``node``'s result, which has the same axes."""
        if value.layout is None:
            return None
        shape = self.out_shape(node)
        if len(shape) != len(value.layout.shape):
            raise NotLocal("an operator that changes the number of axes")
        return value.layout.with_shape(shape)

    def like_shape(self, node: fx.Node, left: Value, right: Value) -> Layout | None:
        """The layout of an element-wise result of two image tensors, if it is local."""
        if left.layout is None and right.layout is None:
            if len(left.shape) != len(right.shape):
                raise NotLocal("arithmetic of vectors of different ranks")
            return None
        if left.layout is None or right.layout is None:
            raise NotLocal("arithmetic of a feature map and a tensor that is not one")
        a, b = left.layout, right.layout
        if a.axes != b.axes or len(a.shape) != len(b.shape):
            raise NotLocal(f"arithmetic of feature maps in layouts {a} and {b}")
        ones = (1,) * len(a.channel_shape)
        if a.channel_shape != b.channel_shape and ones not in (a.channel_shape, b.channel_shape):
            raise NotLocal("arithmetic that broadcasts over some channel axes only")
        return a.with_shape(self.out_shape(node))

    def as_scalar(self, value: Any) -> Any:
        """A one-element model tensor as a Python number; anything else as it is."""
        tensor = value.tensor if isinstance(value, Value) else None
        if tensor is not None and tensor.numel() == 1 and tensor.dim() <= 1:
            return float(tensor.item())
        return value

    def weight(self, value: Any, what: str) -> WeightRef:
        """The handle of a model tensor (a folded one gets a name of its own)."""
        if not isinstance(value, Value) or not value.is_constant:
            raise NotLocal(f"{what} computed from the image")
        assert value.ref is not None and value.tensor is not None
        self.tensors.setdefault(value.ref.path, value.tensor)  # a folded tensor, once used
        return value.ref

    def register(self, tensor: torch.Tensor, hint: str) -> WeightRef:
        name = f"<{hint}>" if f"<{hint}>" not in self.tensors else f"<{hint}:{len(self.tensors)}>"
        self.tensors[name] = tensor
        return WeightRef(name, tuple(tensor.shape))

    def constant_for(self, constant: Value, image: Value) -> Value:
        """A model tensor that meets ``image`` in arithmetic, as a ``Constant`` node in the
        image's canonical form; ``NotLocal`` if its broadcast is not one the IR has."""
        assert constant.tensor is not None
        tensor = constant.tensor
        rank = len(image.shape) + 1
        if tensor.dim() > rank:
            raise NotLocal("a constant with more axes than the tensor it meets")
        tensor = tensor.reshape((1,) * (rank - tensor.dim()) + tuple(tensor.shape))
        if tensor.shape[0] != 1:
            raise NotLocal("a constant that varies over the batch")
        layout = image.layout
        if layout is None:
            ref = self.weight(constant, "a constant")
            return self._constant_node(ref, Schema(tuple(tensor.shape[1:]), spatial=False), None)
        per_image = tuple(tensor.shape[1:])
        channels = tuple(per_image[a] for a in layout.channel_axes)
        if channels not in (layout.channel_shape, (1,) * len(channels)):
            raise NotLocal("a constant that broadcasts over some channel axes only")
        if any(per_image[a] not in (1, layout.shape[a]) for a in layout.axes):
            raise NotLocal("a constant that does not cover the map")
        d = layout.d
        canonical = tensor.movedim(tuple(1 + a for a in layout.axes), tuple(range(-d, 0)))
        canonical = canonical.reshape(math.prod(channels), *(per_image[a] for a in layout.axes))
        if tuple(canonical.shape) == tuple(constant.tensor.shape):
            ref = self.weight(constant, "a constant")
        else:
            path = constant.ref.path.strip("<>") if constant.ref else "constant"
            ref = self.register(canonical.contiguous(), f"{path} as C×H×W")
        return self._constant_node(
            ref, Schema(tuple(canonical.shape)), layout.with_shape(per_image)
        )

    def _constant_node(self, ref: WeightRef, schema: Schema, layout: Layout | None) -> Value:
        key = (ref.path, schema.shape)
        name = self._constants.get(key)
        if name is None:
            name = self._unique(_identifier(ref.path))
            self.nodes.append(Node(name, Constant(ref), (), schema))
            self._constants[key] = name
        return Value(name, layout.shape if layout else schema.shape, layout)

    def call(
        self,
        node: fx.Node,
        images: list[Value],
        *,
        item: int | None = None,
        spatial_layout: Layout | None = None,
    ) -> Call:
        """``node``'s ATen call with ``images`` as ``Arg``s and model tensors as handles."""
        target = node.target
        assert isinstance(target, torch._ops.OpOverload)
        if target._schema.is_mutable:
            target = _functional(node)

        def convert(value: Any) -> Any:
            if isinstance(value, fx.Node):
                found = self.values[value]
                for index, image in enumerate(images):
                    if found is image:
                        return Arg(index)
                if isinstance(found, Value) and found.is_constant:
                    if spatial_layout is not None:
                        self._check_constant(found, spatial_layout)
                    return self.weight(found, "a constant")
                raise NotLocal("an operator of several image tensors")
            if isinstance(value, (list, tuple)):
                return tuple(convert(v) for v in value)
            return value

        args = tuple(convert(a) for a in node.args)
        kwargs = tuple((k, convert(v)) for k, v in node.kwargs.items())
        return Call(str(target), args, kwargs, item)

    def _check_constant(self, constant: Value, layout: Layout) -> None:
        rank = len(layout.shape) + 1
        shape = (1,) * (rank - len(constant.shape)) + constant.shape
        if len(shape) == rank and any(shape[1 + a] != 1 for a in layout.axes):
            raise NotLocal("a per-position operator with a constant that varies over space")

    def emit(
        self, node: fx.Node, op: Operator, inputs: list[Value], layout: Layout | None
    ) -> Value:
        """Append the IR node computing ``node`` (in ``layout``, or as it is if not spatial)."""
        names = []
        for value in inputs:  # translators turn model tensors into Constant nodes first
            assert value.name is not None, node
            names.append(value.name)
        if layout is not None:
            schema, shape = Schema(layout.canonical), layout.shape
        else:
            shape = self.out_shape(node)
            schema = Schema(shape, spatial=False)
        name = self._name(node)
        self.nodes.append(Node(name, op, tuple(names), schema, self._source(node)))
        return Value(name, shape, layout)

    def fallback(
        self,
        node: fx.Node,
        target: Any,
        why: str,
        *,
        item: int | None = None,
        at: fx.Node | None = None,
    ) -> Translation | Deferred:
        """``node`` as the exact fallback: the ATen call itself on full per-query tensors.
        While the result's batch axis is not in front (attention's ``qkv.permute(2, 0, …)``,
        ``flatten(0, 1)``) the calls stay ``Deferred`` and join the next fallback node."""
        returns = target._schema.returns
        if item is None and (len(returns) > 1 or str(returns[0].type).startswith("List")):
            return Outputs(
                lambda getitem, index: self.fallback(node, target, why, item=index, at=getitem)
            )
        at = at or node
        deferred = Deferred(node, target, item, why)
        if not batch_in_front(node, at):
            return deferred
        program = FallbackProgram(self)
        program.visit(deferred)
        shape = self.out_shape(at)
        images = program.inputs
        out = next((v.layout for v in images if v.layout is not None and v.shape == shape), None)
        if out is None and len(shape) == 3:
            out = Layout.standard(shape)
        name = op_name(target)
        if name not in self._fallbacks:
            self._fallbacks.add(name)
            log.info("%s runs as an exact fallback on full tensors: %s", name, why)
        layouts = tuple(v.layout for v in images)
        batched = len(program.calls) == 1 and self._batch_free(target, node, at)
        op = Aten(tuple(program.calls), layouts, out, program.why, program.fma, batched)
        return self.emit(at, op, images, out)

    def _batch_free(self, target: Any, node: fx.Node, at: fx.Node) -> bool:
        """Does ``node``'s call give each image's result whatever the batch: no shape argument
        (a baked batch of one) and no model tensor shaped like a batch of one, unless the
        operator broadcasts (point-wise)?"""
        args = bind(target, node.args, node.kwargs)
        if any(args.get(name) is not None for name in SHAPE_ARGUMENTS):
            return False
        rank = len(self.out_shape(at)) + 1
        pointwise = torch.Tag.pointwise in target.tags

        def batch_shaped(value: Any) -> bool:
            if isinstance(value, fx.Node):
                found = self.values.get(value)
                return (
                    isinstance(found, Value)
                    and found.is_constant
                    and len(found.shape) >= rank
                    and found.shape[0] == 1
                )
            if isinstance(value, (list, tuple)):
                return any(batch_shaped(v) for v in value)
            return False

        return pointwise or not any(batch_shaped(v) for v in (*node.args, *node.kwargs.values()))

    # -- names ----------------------------------------------------------------------------------

    def _module(self, node: fx.Node) -> tuple[str, str] | None:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            return None
        path, kind = list(stack.values())[-1]
        path = _module_path(str(path))
        kind = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1]
        return path, kind

    def _is_leaf(self, path: str) -> bool:
        try:
            module = self.exported.model.get_submodule(path)
        except AttributeError:
            return False
        return path != "" and next(iter(module.children()), None) is None

    def _name(self, node: fx.Node) -> str:
        module = self._module(node)
        base = node.name
        if module is not None and self._is_leaf(module[0]):
            base = _identifier(module[0])
        return self._unique(base)

    def _unique(self, base: str) -> str:
        name, count = base, 0
        while name in self._used:
            count += 1
            name = f"{base}_{count}"
        self._used.add(name)
        return name

    def _source(self, node: fx.Node) -> str:
        module = self._module(node)
        producer = node.args[0] if getattr(node.target, "__name__", "") == "getitem" else node
        name = op_name(producer.target)  # type: ignore[union-attr]
        if module is None or module[0] == "":
            return name
        path, kind = module
        if self._is_leaf(path):
            return f"{path} ({kind})"
        return f"{name} in {path} ({kind})"


def _module_path(path: str) -> str:
    """``layer1.0.conv1`` from export's module paths (also older ``L['self'].layer1[0]``)."""
    path = path.replace("L['self']", "").replace("L__self__", "")
    path = path.replace("[", ".").replace("]", "").replace("'", "")
    return path.strip("._")


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in text).strip("_") or "value"


def _constant(tensor: torch.Tensor, path: str) -> Value:
    tensor = tensor.detach()
    return Value(None, tuple(tensor.shape), None, tensor, WeightRef(path, tuple(tensor.shape)))


def _has_deferred(value: Any) -> bool:
    if isinstance(value, Deferred):
        return True
    if isinstance(value, dict):
        return any(_has_deferred(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_deferred(v) for v in value)
    return False


def _depends_on_image(value: Any) -> bool:
    if isinstance(value, (Outputs, Deferred)):
        return True
    if isinstance(value, Value):
        return not value.is_constant
    if isinstance(value, (list, tuple)):
        return any(_depends_on_image(v) for v in value)
    return False


def _split(target: Any, bound: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    positional, keywords = [], {}
    for argument in target._schema.arguments:
        if argument.kwarg_only:
            keywords[argument.name] = bound[argument.name]
        else:
            positional.append(bound[argument.name])
    return positional, keywords
