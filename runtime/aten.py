"""Running the ATen calls the importer kept: per-position calls (``Pointwise``) on patches in
any layout, and the exact fallback (``Aten``) on full tensors, one image at a time."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from compiler.ir import Arg, Aten, Call, Pointwise, Tmp, WeightRef
from compiler.types import Layout
from runtime.weights import Weights

# A ``view`` that was valid for the strides a tensor had at export may not be for the strides
# it has when replayed (views are stored channels-last; torch versions decompose ``reshape``
# into ``view`` by the traced strides): replay it as ``reshape``, which gives the same values.
_REPLAYED_AS = {
    "aten.view.default": "aten.reshape.default",
    "aten._unsafe_view.default": "aten.reshape.default",
}


@functools.cache
def resolve(target: str) -> Any:
    """``torch.ops.aten.layer_norm.default`` for ``"aten.layer_norm.default"``."""
    namespace, name, overload = _REPLAYED_AS.get(target, target).split(".")
    return getattr(getattr(getattr(torch.ops, namespace), name), overload)


def run(call: Call, tensors: list[Tensor], weights: Weights, temps: Sequence[Any] = ()) -> Any:
    """The call with ``Arg(i)`` bound to ``tensors[i]``, ``Tmp(j)`` to ``temps[j]`` and
    handles to the model's tensors."""

    def bind(value: Any) -> Any:
        if isinstance(value, Arg):
            return tensors[value.index]
        if isinstance(value, Tmp):
            return temps[value.index]
        if isinstance(value, WeightRef):
            return weights[value]
        if isinstance(value, tuple):
            return [bind(v) for v in value]
        return value

    result = resolve(call.target)(
        *(bind(a) for a in call.args), **{k: bind(v) for k, v in call.kwargs}
    )
    return result[call.item] if call.item is not None else result


def to_model(x: Tensor, layout: Layout) -> Tensor:
    """A canonical ``[B, C, *spatial]`` tensor in the model's layout (any extents: a box)."""
    spatial = x.shape[x.dim() - layout.d :]
    x = x.reshape(x.shape[0], *layout.channel_shape, *spatial)
    last = tuple(range(x.dim() - layout.d, x.dim()))
    return x.movedim(last, tuple(1 + axis for axis in layout.axes))


def to_canonical(y: Tensor, layout: Layout) -> Tensor:
    """The inverse of ``to_model``."""
    last = tuple(range(y.dim() - layout.d, y.dim()))
    y = y.movedim(tuple(1 + axis for axis in layout.axes), last)
    spatial = y.shape[y.dim() - layout.d :]
    return y.reshape(y.shape[0], math.prod(y.shape[1 : y.dim() - layout.d]), *spatial)


def pointwise(op: Pointwise, x: Tensor, weights: Weights) -> Tensor:
    """A per-position call on a canonical tensor (a full map or a box)."""
    return to_canonical(run(op.call, [to_model(x, op.layouts[0])], weights), op.out)


def fallback(op: Aten, inputs: list[Tensor], weights: Weights) -> Tensor:
    """The fallback program on full tensors with a leading batch: on the whole batch when it
    is ``batched``, else each image alone, as the model ran it at export (batch 1). Inputs are
    made contiguous in the model's layout (a ``view`` in the program needs the strides the
    model had; views are stored channels-last)."""
    tensors = [
        (to_model(x, lay) if lay is not None else x).contiguous()
        for x, lay in zip(inputs, op.layouts)
    ]

    def program(batch: list[Tensor]) -> Tensor:
        temps: list[Any] = []
        for call in op.calls:
            temps.append(run(call, batch, weights, temps))
        result: Tensor = temps[-1]
        return result

    if op.batched:
        result = program(tensors)
    else:
        images = range(len(tensors[0]))
        result = torch.cat([program([t[i : i + 1] for t in tensors]) for i in images])
    return to_canonical(result, op.out) if op.out is not None else result
