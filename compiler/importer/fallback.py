"""The exact fallback: an ATen call no translator places in space runs as the model ran it, on
full per-query tensors (an ``Aten`` node). Calls whose result has its batch axis elsewhere than
in front stay ``Deferred`` and join the next fallback node's program (``FallbackProgram``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import fx

from compiler.errors import UnsupportedOperationError
from compiler.importer.translators import Value, bind
from compiler.ir import Arg, Call, Tmp, WeightRef


class Values(Protocol):
    """What a fallback program reads of the import: each exported node's value so far, and a
    model tensor as a weight handle."""

    values: dict[fx.Node, Any]

    def weight(self, value: Any, what: str) -> WeightRef: ...


@dataclass(frozen=True, eq=False)
class Deferred:
    """A fallback call whose result has its batch axis elsewhere than in front: not yet a
    node; the next fallback that reads it takes the call (and what it reads) into its own
    program."""

    node: fx.Node
    target: Any
    item: int | None
    why: str


class FallbackProgram:
    """A fallback program being built from ``Deferred`` calls: its image inputs and calls,
    each call once (a residual that reads a deferred tensor twice shares it)."""

    def __init__(self, ctx: Values):
        self.ctx = ctx
        self.inputs: list[Value] = []
        self.calls: list[Call] = []
        self.why = ""
        self.fma = 0
        self._done: dict[tuple[fx.Node, int | None], Tmp] = {}

    def arg(self, value: Value) -> Arg:
        for index, known in enumerate(self.inputs):
            if known is value:
                return Arg(index)
        self.inputs.append(value)
        return Arg(len(self.inputs) - 1)

    def visit(self, deferred: Deferred) -> Tmp:
        """Append ``deferred``'s call after the calls it reads; its result's ``Tmp``."""
        key = (deferred.node, deferred.item)
        if key in self._done:
            return self._done[key]
        self.why = self.why or deferred.why

        def convert(value: Any) -> Any:
            if isinstance(value, fx.Node):
                found = self.ctx.values[value]
                if isinstance(found, Deferred):
                    return self.visit(found)
                if isinstance(found, Value) and not found.is_constant:
                    return self.arg(found)
                if isinstance(found, Value):
                    return self.ctx.weight(found, "a constant")
                raise UnsupportedOperationError(f"exported node {value.name!r} has no value")
            if isinstance(value, (list, tuple)):
                return tuple(convert(v) for v in value)
            return value

        node = deferred.node
        args = tuple(convert(a) for a in node.args)
        kwargs = tuple((k, convert(v)) for k, v in node.kwargs.items())
        self.calls.append(Call(str(deferred.target), args, kwargs, deferred.item))
        self.fma += _fma(node)
        self._done[key] = Tmp(len(self.calls) - 1)
        return self._done[key]


SHAPE_ARGUMENTS = ("size", "shape", "sizes", "repeats")


_BATCH_AXES = {"dim", "dim0", "dim1", "start_dim", "source", "destination"}


def batch_in_front(node: fx.Node, at: fx.Node) -> bool:
    """Is the batch axis still the first axis of ``at``'s result (an image's tensor)?"""
    value = at.meta.get("val")
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != 1:
        return False
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return True
    source = next(
        (a for a in node.all_input_nodes if isinstance(a.meta.get("val"), torch.Tensor)), None
    )
    rank = source.meta["val"].dim() if source is not None else value.dim()
    args = bind(target, node.args, node.kwargs)
    if target.overloadpacket.__name__ == "permute":
        return int(args["dims"][0]) % max(rank, 1) == 0
    for name, given in args.items():
        if name not in _BATCH_AXES or given is None:
            continue
        dims = given if isinstance(given, (list, tuple)) else [given]
        if any(isinstance(d, int) and d % max(rank, 1) == 0 for d in dims):
            return False
    return True


def _fma(node: fx.Node) -> int:
    """Multiply-adds of one call of ``node`` for one image, from its fake tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    def fake(value: Any) -> Any:
        if isinstance(value, fx.Node):
            return value.meta.get("val")
        if isinstance(value, (list, tuple)):
            return type(value)(fake(v) for v in value)
        return value

    try:
        args = tuple(fake(a) for a in node.args)
        kwargs = {k: fake(v) for k, v in node.kwargs.items()}
        with FlopCounterMode(display=False) as counter:
            node.target(*args, **kwargs)  # type: ignore[operator]
        return int(counter.get_total_flops()) // 2
    except Exception:  # a count is a nicety; an operator the counter cannot run counts 0
        return 0
