"""How each convolution of the Triton backend runs: the fused gather-convolution kernel or a
gather + cuDNN, forced or chosen by timing both on the first batch of each shape (GPU only;
the interpreter always runs the fused kernel)."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Hashable

import torch

log = logging.getLogger(__name__)


class ConvChoice(enum.Enum):
    MEASURE = "measure"  # time both on the first batch of each shape (GPU only)
    TRITON = "triton"  # the fused gather-convolution kernel
    CUDNN = "cudnn"  # gather into a window buffer, then F.conv2d


class ConvMeasurements:
    """The faster implementation per convolution shape, timed once and remembered."""

    def __init__(self) -> None:
        self._known: dict[Hashable, ConvChoice] = {}

    def choose(
        self,
        name: str,
        key: Hashable,
        fused: Callable[[], object],
        cudnn: Callable[[], object],
    ) -> ConvChoice:
        """``key`` (the convolution, its box, batch shape and dtype) decides which shapes share
        a measurement; ``name`` is for the log."""
        known = self._known.get(key)
        if known is None:
            times = {ConvChoice.TRITON: time_call(fused), ConvChoice.CUDNN: time_call(cudnn)}
            known = self._known[key] = min(times, key=times.__getitem__)
            log.info(
                "%s: fused %.3f ms, gather + cuDNN %.3f ms → %s",
                name,
                times[ConvChoice.TRITON] * 1e3,
                times[ConvChoice.CUDNN] * 1e3,
                known.value,
            )
        return known


def time_call(function: Callable[[], object], repeat: int = 3) -> float:
    """Seconds per call on the GPU, after one warm-up call (which also autotunes)."""
    function()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat
