"""What translators share: argument binding by the operator's schema, the two ways a
translation can end besides success, and ``pointwise`` (a per-position operator on a feature
map).

A translator receives the exported node, its arguments bound by name (exported nodes replaced
by ``Value``s) and the import's ``Context`` (``compiler.importer.context``); it returns the
``Value`` it computes, or ``Outputs`` for an operator with several results. It raises
``NotLocal`` when the operator is fine but not one it can place in space — the importer then
runs it as the exact fallback — and ``UnsupportedOperationError`` (via ``unsupported``) when the
model cannot be explained at all (random ops, batch statistics).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from compiler.errors import UnsupportedOperationError
from compiler.importer.context import Context, Outputs, Translation, Translator, Value
from compiler.ir import Pointwise
from compiler.types import Layout

__all__ = [
    "Context", "NotLocal", "Outputs", "Translation", "Translator", "Value", "axis", "bind",
    "op_name", "pointwise", "spatial", "standard", "unsupported",
]  # fmt: skip


class NotLocal(Exception):
    """The operator is not one the engine can place in space: run it as the exact fallback."""


def bind(
    target: torch._ops.OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
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
    source = spatial(value, f"{what} of a tensor that is not a feature map")
    assert source.layout is not None
    if not source.layout.is_standard:
        raise NotLocal(f"{what} of a tensor in layout {source.layout}, not [N, C, H, W]")
    return source


def pointwise(
    node: fx.Node,
    args: dict[str, Any],
    ctx: Context,
    source: Value,
    *,
    out: Layout | None = None,
    fma_per_cell: int = 0,
    item: int | None = None,
    at: fx.Node | None = None,
    broadcast: bool = False,
) -> Value:
    """``node``'s call as a ``Pointwise`` node on the feature map ``source``; the result
    takes the name and shape of ``at`` (default: ``node``). With ``broadcast`` (element-wise
    operators) the model tensors it reads broadcast against ``source`` and must not vary
    over space."""
    layout = spatial(source, "a per-position operator on a tensor that is not a feature map")
    assert layout.layout is not None
    at = at or node
    out = out or ctx.like(at, source)
    if out is None:
        raise NotLocal("a per-position operator whose result is not a feature map")
    call = ctx.call(node, [source], item=item, spatial_layout=layout.layout if broadcast else None)
    op = Pointwise(call, (layout.layout,), out, fma_per_cell)
    return ctx.emit(at, op, [source], out)
