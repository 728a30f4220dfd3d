"""The update boxes cover exactly what changes — checked against perturbation, in 2-D.

Two properties, for every window geometry the rules handle:
- *sound*: every output cell that an input change reaches lies inside the box (else the plan
  is wrong);
- *tight*: the box is no larger than the smallest uniform box that every placement of the
  input box needs (else the plan is exact but silently slower).
And at plan level: in a compiled plan of a random network, every cell of every boxed node that
the occlusion changes lies inside that query's box.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

import krypton_ql as kql
from compiler import boxes
from compiler.boxes import Positions
from compiler.ir import Constant, Input, State
from compiler.types import Padding, Size2, Window
from runtime import full as full_ops
from runtime.weights import Weights
from tests import oracle
from tests.profiles import examples
from tests.strategies import Case, cnn_cases, pinned_cases
from tests.strategies_nd import Case as NdCase
from tests.strategies_nd import nd_cases


@st.composite
def geometries(draw: st.DrawFn) -> tuple[str, Window, Size2, Size2]:
    """A convolution (any stride, dilation and asymmetric padding) or a max pool (ceil mode,
    dilation, symmetric padding up to half the kernel), a map and an input box."""
    kind = draw(st.sampled_from(["conv", "pool"]))
    kernel = Size2(draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = Size2(draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = Size2(draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if kind == "conv":
        # every output window must touch the map (a window of padding alone never changes)
        sides = [draw(st.integers(0, (k - 1) * d)) for k, d in
                 ((kernel.h, dilation.h),) * 2 + ((kernel.w, dilation.w),) * 2]  # fmt: skip
        window = Window(kernel, stride, dilation, Padding.sides(*sides))
    else:
        ph, pw = draw(st.integers(0, kernel.h // 2)), draw(st.integers(0, kernel.w // 2))
        padding = Padding.sides(ph, ph, pw, pw)
        window = Window(kernel, stride, dilation, padding, draw(st.booleans()))
    extent = window.extent
    size = Size2(draw(st.integers(1, 14)), draw(st.integers(1, 14)))
    p = window.padding
    assume(size.h + p.top + p.bottom >= extent.h and size.w + p.left + p.right >= extent.w)
    box = Size2(draw(st.integers(1, size.h)), draw(st.integers(1, size.w)))
    return kind, window, size, box


def _reach(kind: str, window: Window, maps: torch.Tensor) -> torch.Tensor:
    """The operator on ``maps [B, 1, H, W]``, built so that raising any input cell raises
    every output that reads it: a sum over the window, or a max over it."""
    p, k = window.padding, window.kernel
    stride, dilation = (window.stride.h, window.stride.w), (window.dilation.h, window.dilation.w)
    if kind == "conv":
        padded = F.pad(maps, (p.left, p.right, p.top, p.bottom))
        ones = torch.ones(1, 1, k.h, k.w, dtype=maps.dtype)
        return F.conv2d(padded, ones, stride=stride, dilation=dilation)
    return F.max_pool2d(maps, (k.h, k.w), stride, (p.top, p.left), dilation, window.ceil_mode)


def _side(value: Size2 | Padding, dim: str) -> int:
    return getattr(value, dim)


def _formula(window: Window, box_in: Size2, out: Size2, dim: str) -> int:
    """``min(ceil((W + D·(K − 1))/S), W_O)``: the outputs whose windows meet a box of width
    ``W`` (research §2.3), written out again here."""
    width, kernel = _side(box_in, dim), _side(window.kernel, dim)
    dilation, stride = _side(window.dilation, dim), _side(window.stride, dim)
    return min(-(-(width + dilation * (kernel - 1)) // stride), _side(out, dim))


def _tight(window: Window, box_in: Size2, size: Size2, out: Size2, dim: str) -> bool:
    """Whether some placement needs the formula's whole box: the box is at least as wide as
    the dilation (no holes between a window's taps), and there are ``S`` consecutive
    placements whose windows all lie inside the map (no border cuts the count)."""
    width, stride = _side(box_in, dim), _side(window.stride, dim)
    if width < _side(window.dilation, dim):
        return False
    lead = window.padding.top if dim == "h" else window.padding.left
    extent = _side(window.extent, dim)
    starts = np.arange(_side(size, dim) - width + 1)
    first = -((-(starts + lead - extent + 1)) // stride)
    last = (starts + width - 1 + lead) // stride
    return int(((first >= 0) & (last < _side(out, dim))).sum()) >= stride


@settings(max_examples=examples(300))
@given(geometry=geometries())
@example(geometry=("pool", Window(Size2(3, 2), Size2(2, 3), Size2(1, 2), Padding.sides(1, 1, 1, 1),
                                  True), Size2(8, 10), Size2(3, 2)))  # fmt: skip
@example(geometry=("conv", Window(Size2(3, 3), Size2(2, 1), Size2(1, 1), Padding.sides(2, 0, 0, 2)),
                   Size2(7, 6), Size2(2, 3)))  # fmt: skip
def test_window_boxes_are_sound_and_tight(geometry) -> None:
    kind, window, size, box_in = geometry
    rows, cols = size.h - box_in.h + 1, size.w - box_in.w + 1  # every placement of the box
    y, x = np.divmod(np.arange(rows * cols), cols)
    # small integers: sums are exact, so an output that reads no raised cell is unchanged
    base = torch.randint(0, 5, (1, 1, size.h, size.w)).double()
    raised = base.repeat(len(y), 1, 1, 1)
    for b, (top, left) in enumerate(zip(y, x)):
        raised[b, :, top : top + box_in.h, left : left + box_in.w] += 10.0
    before, after = _reach(kind, window, base), _reach(kind, window, raised)
    out = Size2(*before.shape[2:])
    assert window.output_size(size) == out  # PyTorch's output size, ceil mode included
    box = boxes.output_box(box_in, window, out)
    pad, extent, stride = window.padding, window.extent, window.stride
    oy = boxes.window_start(y, extent.h, stride.h, pad.top, box.h, out.h)
    ox = boxes.window_start(x, extent.w, stride.w, pad.left, box.w, out.w)
    assert (oy >= 0).all() and (ox >= 0).all() and (oy + box.h <= out.h).all()
    assert (ox + box.w <= out.w).all()
    spans = []
    for b in range(len(y)):
        moved = (after[b, 0] != before[0, 0]).nonzero()
        if not len(moved):
            continue  # a stride that skips the changed cells: nothing changes
        my, mx = moved[:, 0].numpy(), moved[:, 1].numpy()
        assert oy[b] <= my.min() and my.max() < oy[b] + box.h, ("rows", b, my, oy[b], box)
        assert ox[b] <= mx.min() and mx.max() < ox[b] + box.w, ("cols", b, mx, ox[b], box)
        spans.append((my.max() - my.min() + 1, mx.max() - mx.min() + 1))
    assume(spans)
    needed = np.max(spans, axis=0)
    for dim, got, need in (("h", box.h, needed[0]), ("w", box.w, needed[1])):
        assert got <= _formula(window, box_in, out, dim), f"{dim}: larger than the formula"
        tight = _tight(window, box_in, size, out, dim)
        event(f"box side checked for tightness: {tight}")
        if tight:
            assert got == need, f"{dim}: {got} cells where {need} are needed"
    # the read-in window is exactly the input cells the box's outputs read
    ry, height = boxes.read_window(oy, box.h, extent.h, stride.h, pad.top)
    assert height == boxes.read_size(box, window).h == (box.h - 1) * stride.h + extent.h
    assert (ry == oy * stride.h - pad.top).all()


@settings(max_examples=examples(300))
@given(
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    ph=st.integers(1, 30),
    pw=st.integers(1, 30),
    sy=st.integers(1, 7),
    sx=st.integers(1, 7),
)
def test_positions_follow_captum(h, w, ph, pw, sy, sx) -> None:
    """The grid is the oracle's windows (Captum's): ``ceil((D − P)/S) + 1`` per dimension, the
    last clipped, none starting off the image."""
    assume(ph <= h and pw <= w)
    grid = Positions.grid_of(Size2(h, w), Size2(ph, pw), Size2(sy, sx))
    tops, lefts = oracle.window_starts(h, ph, sy), oracle.window_starts(w, pw, sx)
    assert (grid.rows, grid.cols) == (len(tops), len(lefts))
    assert grid.top.tolist() == [t for t in tops for _ in lefts]
    assert grid.left.tolist() == lefts * len(tops)


def _values(plan, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's full value in the logical plan (plain torch operators)."""
    weights, values = Weights(plan.exported.tensors), {}
    for node in plan.logical:
        if isinstance(node.op, Input):
            values[node.name] = images
        elif isinstance(node.op, Constant):
            values[node.name] = weights[node.op.ref].reshape(1, *node.schema.shape)
        else:
            values[node.name] = full_ops.full(node, [values[i] for i in node.inputs], weights)
    return values


PINNED = pinned_cases()


@settings(max_examples=examples(60))
@given(case=cnn_cases())
@example(case=PINNED["pad"])
@example(case=PINNED["sub"])
@example(case=PINNED["clipped"])
@example(case=PINNED["offset"])
def test_every_changed_cell_of_a_plan_lies_in_its_box(case: Case) -> None:
    """Run the logical plan on the clean image and on every occluded copy: at every boxed node
    of the rewritten plan, each query's changed cells lie inside that query's box."""
    assume(_changed_cells_lie_in_their_boxes(case) > 0)


@settings(max_examples=examples(30))
@given(case=st.sampled_from([1, 3]).flatmap(nd_cases))
def test_boxes_of_signals_and_volumes_are_sound_along_every_axis(case: NdCase) -> None:
    """The same on 1-D and 3-D networks: each axis of a box bounds the changed cells."""
    assume(_changed_cells_lie_in_their_boxes(case) > 0)


def _changed_cells_lie_in_their_boxes(case: Case | NdCase) -> int:
    """Checks every boxed node of ``case``'s plan; returns how many (node, query) pairs moved."""
    plan = kql.compile(
        case.model, case.image.shape, patch=case.patch, stride=case.stride, color=case.color
    )
    copies, _ = oracle.occluded_copies(case.image, case.patch, case.stride, case.color)
    with torch.no_grad():
        # the clean image as a batch of the same size: the same kernels, so bitwise equal
        # wherever the occlusion changes nothing
        clean = _values(plan, case.image.expand_as(copies).contiguous())
        occluded = _values(plan, copies)
    checked = 0
    for node in plan.optimized.plan:
        if node.update is None or node.update.state is not State.BOX:
            continue
        moved = (occluded[node.name] != clean[node.name]).any(dim=1)  # [queries, *axes]
        origins = plan.optimized.origins[node.name]
        box = node.update.box
        for query in moved.nonzero()[:, 0].unique().tolist():
            cells = moved[query].nonzero()
            for axis, (origin, extent) in enumerate(zip(origins, box.dims, strict=True)):
                start = int(origin[query])
                assert start <= int(cells[:, axis].min()), (node.name, axis)
                assert int(cells[:, axis].max()) < start + extent, (node.name, axis)
            checked += 1
    return checked
