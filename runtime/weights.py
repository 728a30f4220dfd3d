"""Binding of ``WeightRef`` handles to the model's tensors."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from torch import Tensor, nn

from compiler.ir import WeightRef


def tensor_version(tensor: Tensor) -> Hashable:
    """A tensor's identity, storage, shape, dtype and in-place version (inference tensors,
    which keep no version, count as 0): it changes when the tensor's values may have."""
    try:
        version = tensor._version
    except RuntimeError:
        version = 0
    return (id(tensor), tensor.data_ptr(), tuple(tensor.shape), str(tensor.dtype), version)


class Weights:
    """Resolves weight handles against a module or a mapping of names to tensors (an exported
    model's, see ``compiler.importer.Exported.tensors``); looked up once and cached."""

    def __init__(self, source: nn.Module | Mapping[str, Tensor]):
        self._module = source if isinstance(source, nn.Module) else nn.Module()
        self._cache: dict[str, Tensor] = {}
        self._cell_major: dict[str, tuple[Hashable, Tensor]] = {}
        if not isinstance(source, nn.Module):
            self._cache = {name: tensor.detach() for name, tensor in source.items()}

    def __getitem__(self, ref: WeightRef) -> Tensor:
        tensor = self._cache.get(ref.path)
        if tensor is None:
            owner, _, name = ref.path.rpartition(".")
            holder = self._module.get_submodule(owner) if owner else self._module
            tensor = getattr(holder, name)
            assert isinstance(tensor, torch.Tensor), ref.path
            tensor = tensor.detach()
            self._cache[ref.path] = tensor
        return tensor

    def get(self, ref: WeightRef | None) -> Tensor | None:
        return None if ref is None else self[ref]

    def cell_major(self, ref: WeightRef, channels: int, cells: tuple[int, ...]) -> Tensor:
        """A dense head's weight ``[O, C·|cells|]`` laid out ``[*cells, C, O]``: a run of cells
        along the last axis is one contiguous ``[run·C, O]`` block. Kept until the weight
        changes (``tensor_version``)."""
        weight = self[ref]
        stamp = tensor_version(weight)
        kept = self._cell_major.get(ref.path)
        if kept is None or kept[0] != stamp:
            outputs, d = weight.shape[0], len(cells)
            table = weight.reshape(outputs, channels, *cells)
            table = table.permute(*range(2, 2 + d), 1, 0).contiguous()
            kept = (stamp, table)
            self._cell_major[ref.path] = kept
        return kept[1]
