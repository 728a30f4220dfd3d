"""What a cached or stored result depends on, as a key that changes when that does.

Two strengths: ``versions`` for caches inside this process (cheap: each tensor's identity and
version counter, which every in-place change — ``mul_``, ``copy_``, ``load_state_dict`` —
advances), and ``weights_digest`` / ``file_stamp`` for results kept on disk across processes
(the values themselves, a file's size and modification time).

>>> import torch
>>> layer = torch.nn.Linear(2, 2)
>>> before = versions(layer)
>>> with torch.no_grad():
...     _ = layer.weight.mul_(-3)
>>> versions(layer) == before
False
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from runtime.weights import tensor_version

# Held while torch.export traces a model (it swaps the module's parameters for fake tensors
# until it returns) and while a key is read from one: a thread never reads a half-exported model.
MODEL_LOCK = threading.RLock()


def versions(module: nn.Module) -> Hashable:
    """A key that changes whenever a parameter or buffer of ``module`` is changed in place,
    replaced, added or removed (``module.train()``/``eval()`` included)."""
    with MODEL_LOCK:
        tensors: Iterable[tuple[str, Tensor]] = [
            *module.named_parameters(remove_duplicate=False),
            *module.named_buffers(remove_duplicate=False),
        ]
        modes = tuple(m.training for m in module.modules())
        found = tuple((n, tensor_version(t)) for n, t in tensors if t is not None)
    return (id(module), modes, found)


def weights_digest(module: nn.Module) -> str:
    """A digest of the module's class and the values of its parameters and buffers."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """A digest of a file's bytes (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_stamp(path: Path) -> tuple[str, int, int] | None:
    """A file's resolved path, size and modification time (None: it is not there)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def name_of(value: Any) -> str:
    """A callable's qualified name (what can be said of a transform without running it)."""
    module = getattr(value, "__module__", "") or ""
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{module}.{name}" if module else name
