"""Every kernel launch goes through ``run_kernel``: on CPU tensors in Triton's interpreter with one
small tile, on a GPU through the autotuner. Under ``capture()`` a launch is recorded instead
of run — its kernel, arguments, compile-time flags, grid and autotune configs — which is what
the compile check (``runtime.kernels.aot``) and the launch-limit check read: the very
arguments the runtime would pass, not a second description of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

Grid = Callable[[dict[str, Any]], tuple[int, ...]]


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the runtime would make it."""

    kernel: Any  # the @triton.jit function
    args: tuple[Any, ...]  # positional arguments (tensors, ints, floats)
    flags: dict[str, Any]  # constexpr arguments other than the tile shape
    grid: Grid  # program counts for a config's meta-parameters
    configs: tuple[Any, ...]  # the autotuner's triton.Config list

    @property
    def name(self) -> str:
        return str(self.kernel.fn.__name__)


_captured: ContextVar[list[Launch] | None] = ContextVar("captured_launches", default=None)


@contextmanager
def capture() -> Iterator[list[Launch]]:
    """Record launches instead of running them (tensors may be on the ``meta`` device)."""
    launches: list[Launch] = []
    token = _captured.set(launches)
    try:
        yield launches
    finally:
        _captured.reset(token)


def run_kernel(
    kernel: Any,
    autotuned: Any,
    grid: Grid,
    args: tuple[Any, ...] | list[Any],
    flags: dict[str, Any],
    interpreter_config: dict[str, int],
    device: torch.device,
) -> None:
    """Run ``kernel`` over ``grid`` (or record it, under ``capture()``)."""
    recorded = _captured.get()
    if recorded is not None:
        recorded.append(Launch(kernel, tuple(args), dict(flags), grid, tuple(autotuned.configs)))
    elif device.type == "cpu":  # Triton's interpreter
        kernel[grid](*args, **flags, **interpreter_config)
    else:
        autotuned[grid](*args, **flags)
