"""Helpers shared by the translators: argument binding, errors, readable target names."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from torch import fx

from compiler.errors import UnsupportedOperationError
from compiler.ir import (
    Operator,
)

if TYPE_CHECKING:
    from compiler.importer import ImportContext


Translation = tuple[Operator, tuple[fx.Node, ...]]
Translator = Callable[[fx.Node, "ImportContext"], Translation]


def bind(node: fx.Node, names: Sequence[str], **defaults: Any) -> dict[str, Any]:
    """Positional and keyword arguments of a call, by parameter name."""
    values = dict(defaults)
    values.update(zip(names, node.args))
    values.update(node.kwargs)
    return values


def unsupported(node: fx.Node, why: str) -> UnsupportedOperationError:
    return UnsupportedOperationError(
        f"fx node {node.name!r} (target {target_name(node)}) is not supported: {why}"
    )


def target_name(node: fx.Node) -> str:
    """A readable name of a call's target: ``F.relu``, ``operator.add``, ``torch.flatten``."""
    target = node.target
    if isinstance(target, str):
        return target
    name = getattr(target, "__name__", None) or repr(target)
    module = getattr(target, "__module__", None) or "torch"
    prefixes = {"torch.nn.functional": "F", "_operator": "operator"}
    prefix = prefixes.get(module, "torch" if module.startswith("torch") else module)
    return f"{prefix}.{name}"
