"""Compile options: one frozen object, validated by the front end, read by rules and lowering."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from compiler.types import Size


class LinearStrategy(enum.Enum):
    """How linear operators are maintained: chosen by cost, or forced (for tests and studies)."""

    AUTO = "auto"
    RECOMPUTE = "recompute"
    DELTA = "delta"


@dataclass(frozen=True, slots=True)
class CompileOptions:
    """Everything the compiler needs to know about one occlusion workload."""

    patch: Size
    stride: Size
    color: tuple[float, ...]
    linear_strategy: LinearStrategy = LinearStrategy.AUTO
    batch_size: int | None = None  # None: from the memory budget
    memory_budget: int | None = None  # bytes for per-query buffers; None: no limit
    images: int = 1  # images per run; queries = images × positions
    tau: float = 1.0  # projective-field threshold; 1 is exact (rules/approx)
    # Fit each window operator's box to the queries (boxes.fitted_box); False: the uniform
    # bound, which the paper's analysis and the theoretical speedup at the centre count.
    fit_boxes: bool = True
