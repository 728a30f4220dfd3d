"""threshold_projective_field (≈): cap every window operator's update box at
``round_half_away(τ·W_O)`` per dimension, centred; cells outside keep their view values.

Approximation (research §5.1): the effective projective field of an update grows like the
square root of depth while the exact one grows linearly, so the fringe of a large box carries
little of the change. For a dimension whose exact output box ``W_Ō`` exceeds the cap ``T``:
``W_Ō ← T``; the input width that box implies is ``W_new = T·S − K + 1``; the input box's start
moves by ``(W_I − W_new) // 2`` (a centre crop) before the usual start formula and border
clamp. Input patch cells that still fall inside the read-in window contribute their updated
values; those outside it are dropped. τ = 1 never fires (exact). Dimensions under the cap keep
their exact size and start (the prototype also shifted those by a fraction; we do not).
Preconditions: a boxed input; runs before ``push_delta_through_join`` and only when τ < 1.
"""

from __future__ import annotations

import math

from compiler import boxes
from compiler.ir import JoinAggregate, Node, Pool, State, Strategy, Update
from compiler.rules.base import RuleContext
from compiler.types import Size2


def round_half_away(value: float) -> int:
    """C's ``round`` (the prototype's), not Python's banker's rounding.

    >>> round_half_away(2.5), round_half_away(3.5), round_half_away(2.4999)
    (3, 4, 2)
    """
    return math.floor(value + 0.5)


def cap(tau: float, out_dim: int) -> int:
    """The largest box side a layer with ``out_dim`` outputs keeps under threshold ``tau``.

    >>> cap(0.5, 56), cap(0.7, 7), cap(0.01, 7)
    (28, 5, 1)
    """
    return max(1, round_half_away(tau * out_dim))


def threshold_projective_field(node: Node, ctx: RuleContext) -> Node | None:
    tau = ctx.options.tau
    if tau >= 1.0 or not isinstance(node.op, (JoinAggregate, Pool)):
        return None
    (source,) = ctx.inputs(node)
    if source.state is not State.BOX:
        return None
    assert source.update is not None and source.update.box is not None
    window, box_in, out = node.op.window, source.update.box, node.schema.size
    exact = boxes.output_box(box_in, window, out)
    limit = Size2(cap(tau, out.h), cap(tau, out.w))
    if exact.h <= limit.h and exact.w <= limit.w:
        return None  # under the threshold: the exact rule maintains it
    box = Size2(min(exact.h, limit.h), min(exact.w, limit.w))
    extent, stride = window.extent, window.stride
    crop = Size2(
        _shift(box_in.h, exact.h, box.h, extent.h, stride.h),
        _shift(box_in.w, exact.w, box.w, extent.w, stride.w),
    )
    read = boxes.read_size(box, window)
    return node.with_update(Update(State.BOX, Strategy.RECOMPUTE, box, read, crop))


def _shift(box_in: int, exact: int, capped: int, extent: int, stride: int) -> int:
    """Start shift of the input box: half of what the cut removes (0 if nothing is cut)."""
    if capped >= exact:
        return 0
    return max(0, (box_in - (capped * stride - extent + 1)) // 2)
