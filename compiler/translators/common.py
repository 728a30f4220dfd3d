"""What translators share: the importer's ``Value``, argument binding by the operator's
schema, and the two ways a translation can end besides success.

A translator receives the exported node, its arguments bound by name (exported nodes replaced
by ``Value``s) and the ``ImportContext``; it returns the ``Value`` it computes, or ``Outputs``
for an operator with several results. It raises ``NotLocal`` when the operator is fine but not
one it can place in space — the importer then runs it as the exact fallback — and
``UnsupportedOperationError`` (via ``unsupported``) when the model cannot be explained at all
(random ops, batch statistics).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from compiler.errors import UnsupportedOperationError
from compiler.ir import WeightRef
from compiler.types import Layout

if TYPE_CHECKING:
    from compiler.importer import ImportContext


@dataclass(frozen=True)
class Value:
    """A tensor the exported model computes, as the importer knows it.

    ``name`` is the IR node holding it (``None`` for a model constant, whose ``tensor`` is
    known at import). ``shape`` is the per-image shape the model sees (constants: the whole
    tensor's shape); ``layout`` says where the spatial axes are (``None``: not a feature map,
    and the IR holds the tensor as it is).
    """

    name: str | None
    shape: tuple[int, ...]
    layout: Layout | None = None
    tensor: torch.Tensor | None = None
    ref: WeightRef | None = None

    @property
    def is_constant(self) -> bool:
        return self.name is None

    @property
    def is_spatial(self) -> bool:
        return self.layout is not None


@dataclass(frozen=True)
class Outputs:
    """The results of a multi-output operator, built when a ``getitem`` reads one:
    ``item(getitem_node, index)``."""

    item: Callable[[fx.Node, int], Value]


Translation = Value | Outputs
Translator = Callable[[fx.Node, dict[str, Any], "ImportContext"], Translation]


class NotLocal(Exception):
    """The operator is not one the engine can place in space: run it as the exact fallback."""


def bind(target: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The call's arguments by the schema's parameter names, defaults filled in."""
    bound: dict[str, Any] = {}
    for index, argument in enumerate(target._schema.arguments):
        if index < len(args) and not argument.kwarg_only:
            bound[argument.name] = args[index]
        elif argument.name in kwargs:
            bound[argument.name] = kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
        else:
            bound[argument.name] = None
    return bound


def op_name(target: Any) -> str:
    """``aten.conv2d`` for ``aten.conv2d.padding``; a readable name for anything else."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target.overloadpacket.__name__}"
    return getattr(target, "__name__", None) or str(target)


def unsupported(node: fx.Node, why: str) -> UnsupportedOperationError:
    return UnsupportedOperationError(
        f"{op_name(node.target)} (node {node.name!r}{_where(node)}) is not supported: {why}"
    )


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path, kind = list(stack.values())[-1]
    name = str(kind).rsplit(".", 1)[-1]
    return f" in {path or '<model>'} ({name})"


def axis(dim: int, rank: int) -> int:
    """A possibly negative axis of a tensor with ``rank`` axes (batch included), as >= 0."""
    return dim + rank if dim < 0 else dim


def spatial(value: Any, why: str) -> Value:
    """``value`` as a feature map, or ``NotLocal``."""
    if not isinstance(value, Value) or value.is_constant or value.layout is None:
        raise NotLocal(why)
    return value


def standard(value: Any, what: str) -> Value:
    """``value`` as a ``[N, C, H, W]`` feature map in its standard layout, or ``NotLocal``."""
    value = spatial(value, f"{what} of a tensor that is not a feature map")
    assert value.layout is not None
    if not value.layout.is_standard:
        raise NotLocal(f"{what} of a tensor in layout {value.layout}, not [N, C, H, W]")
    return value
