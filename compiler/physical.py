"""Physical plan: the kernel that computes each node, in execution order, with its fused
element-wise epilogue, launch geometry and buffer lifetimes."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from compiler.ir import Node
from compiler.plan import Batching


class KernelId(enum.Enum):
    """Every physical operator a backend implements (``runtime.reference`` implements all)."""

    VIEW = "view"  # nothing to compute: queries read the materialized view
    OCCLUDE = "occlude_patch"  # fill the patch box with the colour (image outside a clip)
    GATHER_CONV = "gather_conv"  # gather Window(view ⊕ patch), convolve with padding 0
    GATHER_POOL = "gather_pool"  # gather Window(view ⊕ patch), pool with padding 0
    ELEMENTWISE = "elementwise"  # the map on the patch values
    POINTWISE = "pointwise"  # a per-position ATen call on the patch values (any layout)
    UPSAMPLE = "upsample"  # nearest upsampling of the patch values
    GATHER_UPSAMPLE = "gather_upsample"  # gather Window(view ⊕ patch), bilinear upsampling
    SHIFT = "shift"  # constant padding moves the box; values are unchanged
    GATHER_COMBINE = "gather_combine"  # gather operands over the bounding box, combine
    GATHER_CONCAT = "gather_concat"  # gather operands over the bounding box, concatenate
    DELTA_CONV = "delta_conv"  # view_out + conv(Window(0 ⊕ Δ))
    DELTA_POOL = "delta_pool"  # view_out + avg_pool(Window(0 ⊕ Δ))
    DELTA_ELEMENTWISE = "delta_elementwise"  # view_out + scale·Δ (batch norm)
    DELTA_COMBINE = "delta_combine"  # view_out + Δa ± Δb over the bounding box
    DELTA_GLOBAL_POOL = "delta_global_pool"  # pooled view + (ΣΔ)/HW
    DELTA_REGION_SUM = "delta_region_sum"  # region aggregate of the view + s·Σ_box Δ⊙W
    DELTA_LINEAR = "delta_linear"  # a dense head's view output + W|box·Δ (box columns only)
    PROJECT = "project"  # view ⊕ patch as a full per-query tensor
    FULL = "full"  # the operator on full per-query tensors


# Kernels whose result is a per-query box: an element-wise epilogue can run on it in place.
BOXED = frozenset(KernelId) - {
    KernelId.VIEW,
    KernelId.PROJECT,
    KernelId.FULL,
    KernelId.DELTA_GLOBAL_POOL,
    KernelId.DELTA_REGION_SUM,
    KernelId.DELTA_LINEAR,
}


@dataclass(frozen=True, slots=True)
class Launch:
    """The work of one launch for a batch of ``batch`` queries.

    A convolution is an implicit GEMM per group (``M = batch × m`` output pixels × ``N``
    output channels × ``K`` reduction); other kernels map over ``batch × m`` output values.
    ``m`` counts one query's outputs.
    """

    batch: int
    m: int
    n: int = 1
    k: int = 1
    groups: int = 1
    gemm: bool = False

    def __str__(self) -> str:
        if self.gemm:
            groups = f" ×{self.groups} groups" if self.groups > 1 else ""
            return f"gemm M={self.batch}×{self.m} N={self.n} K={self.k}{groups}"
        return f"map {self.batch}×{self.m}"


@dataclass(frozen=True, slots=True)
class Step:
    """One kernel launch per batch: the node it computes, the element-wise nodes fused into its
    epilogue (applied before the result is stored), and the buffers it releases after."""

    node: Node
    kernel: KernelId
    frees: tuple[str, ...] = ()
    epilogue: tuple[Node, ...] = ()
    launch: Launch | None = None

    @property
    def output(self) -> Node:
        """The node whose value the step stores (the last epilogue node, if any)."""
        return self.epilogue[-1] if self.epilogue else self.node


@dataclass(frozen=True, slots=True)
class PhysicalPlan:
    """Steps in execution order, every node in order (for materialization), the views the steps
    read, the output and the batching."""

    steps: tuple[Step, ...]
    nodes: tuple[Node, ...]
    views: frozenset[str]
    output: str
    batching: Batching
