"""Which backend runs a plan: ``auto`` resolves by device, ``triton`` on CPU tensors needs
Triton's interpreter switched on (Triton's own setting: the library reads no environment)."""

from __future__ import annotations

import enum
import importlib.util
import logging

from compiler.errors import InvalidInputError

log = logging.getLogger(__name__)


class Backend(enum.Enum):
    AUTO = "auto"  # triton on CUDA, torch on the CPU
    TORCH = "torch"
    TRITON = "triton"


def resolve(backend: Backend, device_type: str) -> Backend:
    """The backend that runs on ``device_type`` (never ``AUTO``)."""
    has_triton = importlib.util.find_spec("triton") is not None
    if backend is Backend.AUTO:
        if device_type == "cuda" and not has_triton:
            log.warning("triton is not installed: running the torch reference backend on CUDA")
        return Backend.TRITON if device_type == "cuda" and has_triton else Backend.TORCH
    if backend is Backend.TRITON:
        if not has_triton:
            raise InvalidInputError("backend='triton' needs the triton package", option="backend")
        if device_type == "cpu":
            _require_interpreter()
    return backend


def _require_interpreter() -> None:
    """Kernels on CPU tensors run in Triton's interpreter, which must be on before Triton is
    imported (its own library functions are compiled then)."""
    from triton import knobs  # Triton reads TRITON_INTERPRET; the library does not

    if not knobs.runtime.interpret:
        raise InvalidInputError(
            "backend='triton' on CPU tensors runs Triton's interpreter (slow; meant for tests): "
            "set TRITON_INTERPRET=1 in the environment before starting Python, or use "
            "backend='torch' (the default on the CPU)",
            option="backend",
        )
