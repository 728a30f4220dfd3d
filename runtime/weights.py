"""Binding of ``WeightRef`` handles to the model's tensors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compiler.ir import WeightRef


class Weights:
    """Resolves weight handles against a module; tensors are looked up once and cached."""

    def __init__(self, module: nn.Module):
        self._module = module
        self._cache: dict[str, Tensor] = {}

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
