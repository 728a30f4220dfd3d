"""threshold_projective_field (≈): cap every window operator's update box at
``round_half_away(τ·W_O)`` per dimension, placed around the patch; cells outside keep their view
values.

Approximation (research §5.1): the effective projective field of an update grows like the
square root of depth while the exact one grows linearly, so the fringe of a large box carries
little of the change. For a dimension whose exact output box ``W_Ō`` exceeds the cap ``T``:
``W_Ō ← T``, and the cut box is centred on the patch's centre projected to this layer, slid to
stay inside the exact box (``boxes.node_placement``). The paper centres the cut on the *input box*
instead (``x_I += (W_I − W_new)/2``); that is the same wherever the input box is centred on the
patch, but once boxes have been clamped at the map's border or cut before, it is not: on
EfficientNet-Lite0 at τ = 0.9 the paper's rule placed every 7×7 box at rows 0–5 whatever the
patch, so patches in the last row or column lost their whole effect, and τ = 0.9 scored lower
SSIM than τ = 0.8 on every photo. Box sizes, and so the theoretical speedups, are the paper's.
Input patch cells that still fall inside the read-in window contribute their updated values;
those outside it are dropped. τ = 1 never fires (exact). Dimensions under the cap keep their
exact size and start. Preconditions: a boxed input; runs before ``push_delta_through_join`` and
only when τ < 1.
"""

from __future__ import annotations

from compiler import boxes
from compiler.ir import JoinAggregate, Node, Pool, State, Strategy, Update
from compiler.rules.base import RuleContext
from compiler.types import round_half_away


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
    limit = out.map(lambda n: cap(tau, n))
    if all(e <= c for e, c in zip(exact, limit)):
        return None  # under the threshold on every axis: the exact rule maintains it
    box = exact.map(min, limit)
    cut = exact.map(lambda e, b: e - b, box)
    read = boxes.read_size(box, window)
    return node.with_update(Update(State.BOX, Strategy.RECOMPUTE, box, read, cut))
