"""What the importer and its translators share: ``Value`` (a tensor of the exported model as
the import knows it), what a translation returns, and ``Context`` — the part of the import a
translator may ask for (``compiler.importer.walk.ImportContext`` implements it), so that no
translator imports the importer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import fx

from compiler.ir import Call, Operator, WeightRef
from compiler.types import Layout


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
    ``item(getitem_node, index)`` (a ``Value``, or what the import records for a result it
    runs as the exact fallback)."""

    item: Callable[[fx.Node, int], Any]


Translation = Value | Outputs


class Context(Protocol):
    """The import as a translator sees it."""

    def out_shape(self, node: fx.Node) -> tuple[int, ...]:
        """The per-image shape of ``node``'s result."""
        ...

    def like(self, node: fx.Node, value: Value) -> Layout | None:
        """``value``'s layout for ``node``'s result, which has the same axes."""
        ...

    def like_shape(self, node: fx.Node, left: Value, right: Value) -> Layout | None:
        """The layout of an element-wise result of two image tensors, if it is local."""
        ...

    def as_scalar(self, value: Any) -> Any:
        """A one-element model tensor as a Python number; anything else as it is."""
        ...

    def weight(self, value: Any, what: str) -> WeightRef:
        """The handle of a model tensor."""
        ...

    def register(self, tensor: torch.Tensor, hint: str) -> WeightRef:
        """A tensor the translation made, as a handle the plan reads."""
        ...

    def constant_for(self, constant: Value, image: Value) -> Value:
        """A model tensor that meets ``image`` in arithmetic, as a ``Constant`` node."""
        ...

    def call(
        self,
        node: fx.Node,
        images: list[Value],
        *,
        item: int | None = None,
        spatial_layout: Layout | None = None,
    ) -> Call:
        """``node``'s ATen call with its image arguments as the given values."""
        ...

    def emit(
        self, node: fx.Node, op: Operator, inputs: list[Value], layout: Layout | None
    ) -> Value:
        """Append the IR node computing ``node`` and return its value."""
        ...


Translator = Callable[[fx.Node, dict[str, Any], Context], Translation]
