"""Exported programs kept between calls (``krypton_ql.plans.cache`` explains the keys): a
plan of a model and shape seen before skips ``torch.export``."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from torch import nn

from compiler.importer import export
from krypton_ql import fingerprint

EXPORTS_KEPT = 4
_EXPORTS: OrderedDict[Hashable, tuple[weakref.ref, Any]] = OrderedDict()
_EXPORTS_LOCK = threading.Lock()


def place(model: nn.Module) -> Any:
    parameter = next(iter(model.parameters()), None)
    return (parameter.dtype, parameter.device) if parameter is not None else None


def exported(model: nn.Module, shape: tuple[int, ...]) -> Any:
    """The model's exported program at ``shape``, kept while none of its parameters or buffers
    changes, for the last ``EXPORTS_KEPT`` models and shapes."""
    key = (fingerprint.versions(model), tuple(shape), place(model))
    with fingerprint.MODEL_LOCK:  # torch.export is not thread-safe: one export at a time
        with _EXPORTS_LOCK:
            held = _EXPORTS.get(key)
            if held is not None and held[0]() is model:
                _EXPORTS.move_to_end(key)
                return held[1]
        program = export(model, shape)
    with _EXPORTS_LOCK:
        _EXPORTS[key] = (weakref.ref(model), program)
        while len(_EXPORTS) > EXPORTS_KEPT:
            _EXPORTS.popitem(last=False)
    return program


def kept() -> int:
    with _EXPORTS_LOCK:
        return len(_EXPORTS)


def clear() -> None:
    with _EXPORTS_LOCK:
        _EXPORTS.clear()
