"""The relational IR: one frozen dataclass per operator kind, and the ``Node`` that places one.

A feature map is a relation ``A(c, y, x, v)``; a weight tensor is ``K(n, c, ky, kx, v)``.
Operators never hold tensors: parameters are ``WeightRef`` handles into the model, bound by the
runtime. Operators marked ``GLOBAL`` are global-context: every output reads every input cell,
so the IVM rules project an update box to a full per-query tensor before them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from compiler.types import Agg, Layout, Padding, Schema, Size, Window


@dataclass(frozen=True, slots=True)
class WeightRef:
    """A handle to a parameter or buffer of the model, by its dotted path."""

    path: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return self.path


# -- base relation and the query's update --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Input:
    """Scan of the base relation: the image ``A0(c, y, x, v)``."""

    GLOBAL: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Occlude:
    """The query's update to the base relation: cells inside the patch take ``color``."""

    patch: Size
    color: tuple[float, ...]
    GLOBAL: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Constant:
    """A model tensor used as data (``get_attr``); it never changes under occlusion."""

    ref: WeightRef
    GLOBAL: ClassVar[bool] = False


# -- local operators -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinAggregate:
    """Convolution: ``O(n,y',x') = Σ A.v·K.v`` over ``A.c = K.c ∧ A.y = S·y' + D·K.ky − P ∧ …``,
    grouped by ``(n, y', x')``; ``groups`` splits the channel join."""

    weight: WeightRef
    bias: WeightRef | None
    window: Window
    groups: int
    GLOBAL: ClassVar[bool] = False

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]


@dataclass(frozen=True, slots=True)
class Pool:
    """Pooling: the same group-by as a convolution with MAX or AVG and no channel join."""

    agg: Agg
    window: Window
    count_include_pad: bool = True
    divisor_override: int | None = None
    GLOBAL: ClassVar[bool] = False

    @property
    def constant_divisor(self) -> int | None:
        """The divisor every window of an average pool shares, if they all share one (the
        override, or ``kh·kw`` when padding counts and no window hangs over the ceiling).

        >>> window = Window(Size(3, 3), Size(1, 1), Size(1, 1), Padding.sides(1, 1, 1, 1))
        >>> Pool(Agg.AVG, window).constant_divisor
        9
        >>> Pool(Agg.AVG, window, count_include_pad=False).constant_divisor is None
        True
        """
        if self.divisor_override is not None:
            return self.divisor_override
        if self.count_include_pad and not self.window.ceil_mode:
            return self.window.kernel.area
        return None


class Activation(enum.Enum):
    """Element-wise functions with at most two scalar parameters."""

    IDENTITY = "identity"
    RELU = "relu"
    RELU6 = "relu6"
    HARDTANH = "hardtanh"
    LEAKY_RELU = "leaky_relu"
    SILU = "silu"
    HARDSWISH = "hardswish"
    HARDSIGMOID = "hardsigmoid"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    GELU = "gelu"


class Arith(enum.Enum):
    """Arithmetic of a tensor and a scalar, or of two tensors; ``R*`` ops swap the operands."""

    ADD = "+"
    SUB = "-"
    RSUB = "r-"
    MUL = "*"
    DIV = "/"
    RDIV = "r/"


@dataclass(frozen=True, slots=True)
class Map:
    """An element-wise activation: ``σ(A)(c,y,x) = f(A.v)``."""

    fn: Activation
    alpha: float = 0.0
    beta: float = 0.0
    GLOBAL: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Scalar:
    """Element-wise arithmetic with a constant: ``A.v ∘ value``."""

    arith: Arith
    value: float
    GLOBAL: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class BatchNorm:
    """Inference-mode batch norm: a per-channel affine map ``(A.v − μ_c)/σ_c·γ_c + β_c``."""

    mean: WeightRef
    var: WeightRef
    weight: WeightRef | None
    bias: WeightRef | None
    eps: float
    GLOBAL: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Pad:
    """Constant padding: shifts coordinates by (top, left) and adds border tuples of ``value``."""

    padding: Padding
    value: float = 0.0
    GLOBAL: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Combine:
    """Element-wise arithmetic of two relations joined on ``(c, y, x)`` (residual add)."""

    arith: Arith
    GLOBAL: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Concat:
    """Channel-offset union of the inputs (``torch.cat(dim=1)``)."""

    GLOBAL: ClassVar[bool] = False


class UpsampleMode(enum.Enum):
    """How an upsampling fills its cells: copies (nearest), blends of two neighbours per axis
    (bilinear, ``align_corners=False``), or the input at multiples of the factor and zeros
    between (a transposed convolution's zero insertion). Nearest and zeros move a box alike."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    ZEROS = "zeros"

    @property
    def copies_blocks(self) -> bool:
        """Each input cell lands in one output block (nearest, zeros): boxes scale exactly."""
        return self is not UpsampleMode.BILINEAR

    def name_in(self, d: int) -> str:
        """The mode's name for maps of ``d`` spatial axes (linear, bilinear, trilinear)."""
        if self is UpsampleMode.BILINEAR:
            return {1: "linear", 2: "bilinear", 3: "trilinear"}.get(d, f"{d}-linear")
        return str(self.value)


@dataclass(frozen=True, slots=True)
class Upsample:
    """Upsampling by integer factors ``s``. Nearest: ``O(c, y, x) = A(c, ⌊y/s_h⌋, ⌊x/s_w⌋)``; a
    box of ``b`` input cells at ``y0`` becomes exactly ``s·b`` cells at ``s·y0``. Bilinear
    (``align_corners=False``): output row ``y`` blends input rows ``i0 = ⌊max((y + ½)/s − ½,
    0)⌋`` and ``min(i0 + 1, H − 1)``, so a box of ``b`` rows changes at most ``s·(b + 1)``
    output rows, from ``s·y0 − ⌊(s + 1)/2⌋``, read from ``b + 2`` input rows. Zeros (a
    transposed convolution's zero insertion): ``O(c, y, x) = A(c, y/s_h, x/s_w)`` where both
    divide, else 0; its boxes are nearest's."""

    scale: Size
    mode: UpsampleMode = UpsampleMode.NEAREST
    GLOBAL: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Arg:
    """In a ``Call``'s arguments: the node's ``index``-th input, in the layout the model had."""

    index: int


@dataclass(frozen=True, slots=True)
class Tmp:
    """In a fallback program's arguments: the result of its ``index``-th call."""

    index: int


@dataclass(frozen=True, slots=True)
class Call:
    """One ATen operator call as the exported model made it: ``target`` names the overload
    (``aten.layer_norm.default``); tensors in ``args``/``kwargs`` are ``Arg`` (a node input)
    or ``WeightRef`` (a model tensor); ``item`` picks one output of a multi-output operator."""

    target: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()
    item: int | None = None

    @property
    def name(self) -> str:
        """``aten.layer_norm`` (the overload dropped), with ``[item]``."""
        base = self.target.rsplit(".", 1)[0] if self.target.count(".") >= 2 else self.target
        return base + (f"[{self.item}]" if self.item is not None else "")


@dataclass(frozen=True, slots=True)
class Pointwise:
    """A function of each position's channel vector, applied at every ``(y, x)`` alike:
    ``O(·, y, x) = f(A(·, y, x))`` — layer norm over channels, a linear layer on a
    channels-last tensor, channel slices and shuffles, softmax over channels. The call runs on
    the inputs in the model's own ``layouts`` and its result (``out``) is brought back to
    ``[C, H, W]``. Element-wise in space, so it keeps its input's box."""

    call: Call
    layouts: tuple[Layout, ...]
    out: Layout
    fma_per_cell: int = 0
    GLOBAL: ClassVar[bool] = False


# -- global-context operators ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GlobalAvgPool:
    """Mean over H and W: ``O(c) = Σ_{y,x} A.v / HW``; shape ``[C,1,1]`` with keepdim."""

    keepdim: bool = True
    GLOBAL: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class RegionSum:
    """A region aggregate: the weighted sum over H and W ``O(c) = scale · Σ_{y,x} A(c, y, x) ·
    W(c, y, x)`` — a segmentation model's region score (``W`` a region mask, with
    ``scale = 1/HW`` for the wrapper's mean) or a plain spatial sum (``weights`` None: every
    ``W`` is 1). ``weights`` is ``[1 or C, H, W]``, the map's own size; shape ``[C]`` or, with
    ``keepdim``, ``[C, 1, 1]``."""

    weights: WeightRef | None
    scale: float = 1.0
    keepdim: bool = False
    GLOBAL: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class AdaptivePool:
    """Adaptive pooling to an output grid whose windows are not uniform."""

    agg: Agg
    output: Size
    GLOBAL: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Flatten:
    """Flatten every per-image axis into one."""

    GLOBAL: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Linear:
    """A fully-connected layer ``O(n) = Σ_f A.v·K(n, f) + b(n)``. A map input ``[C, *cells]``
    is read flattened, ``f = c·|cells| + cell`` (the delta form of a dense head,
    ``rules.push_delta_through_dense_head``)."""

    weight: WeightRef
    bias: WeightRef | None
    GLOBAL: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Softmax:
    """Softmax (or log-softmax) over the feature axis."""

    log: bool = False
    GLOBAL: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Aten:
    """The exact fallback: ATen calls that no translator places in space (statistics over the
    whole map, attention, an unknown operator). They run as the model ran them, on full
    per-query tensors: image by image as exported (batch 1), or, when ``batched`` (one call
    with no shape argument and no batch-shaped constant), on the whole batch at once.
    ``calls`` is a short program
    (later calls read earlier results as ``Tmp``; a run of calls whose intermediates move the
    batch axis stays in one node); the last call's result is the node's. ``layouts`` bring
    spatial inputs back to the model's layout (``None``: not spatial), ``out`` is the result's
    layout if it is still a feature map. ``why`` says why the first call is not local; ``fma``
    counts the multiply-adds per image (for the cost model)."""

    calls: tuple[Call, ...]
    layouts: tuple[Layout | None, ...]
    out: Layout | None
    why: str
    fma: int = 0
    batched: bool = False  # the call is right for any batch (no batch size baked into it)
    GLOBAL: ClassVar[bool] = True

    @property
    def name(self) -> str:
        names = [call.name for call in self.calls]
        return " → ".join(names if len(names) <= 4 else [*names[:2], "…", names[-1]])


# -- operators that the IVM rules insert ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Project:
    """``view ⊕ patch`` over the whole map: a full per-query tensor for a global operator."""

    GLOBAL: ClassVar[bool] = False


Operator = (
    Input
    | Occlude
    | Constant
    | JoinAggregate
    | Pool
    | Map
    | Scalar
    | BatchNorm
    | Pad
    | Combine
    | Concat
    | GlobalAvgPool
    | RegionSum
    | AdaptivePool
    | Flatten
    | Linear
    | Softmax
    | Project
    | Pointwise
    | Upsample
    | Aten
)


def is_linear(op: Operator) -> bool:
    """Whether ``op`` is linear in its image input, so that an update has a delta form
    (``Δ(op(A)) = op(ΔA)``): a convolution, a batch norm's affine map, an average pool, a sum
    or difference."""
    if isinstance(op, JoinAggregate | BatchNorm):
        return True
    if isinstance(op, Pool):
        return op.agg is Agg.AVG
    return isinstance(op, Combine) and op.arith in (Arith.ADD, Arith.SUB)


ELEMENTWISE = (Map, Scalar, BatchNorm)


# -- how a node is maintained under an update -------------------------------------------------


class State(enum.Enum):
    """What an occlusion query changes at a node."""

    CLEAN = "clean"  # nothing: every query reads the view
    BOX = "box"  # only cells inside a per-query box of uniform size
    FULL = "full"  # possibly every cell: a full tensor per query


class Strategy(enum.Enum):
    """How a node's per-query value is computed."""

    VIEW = "view"  # read the materialized view
    OCCLUDE = "occlude"  # patch cells of the base relation
    RECOMPUTE = "recompute"  # the operator on Window(view ⊕ patch) (Krypton)
    DELTA = "delta"  # view + operator(Δ): linear operators only
    ELEMENTWISE = "elementwise"  # the operator on the patch itself
    BOUNDING_BOX = "bbox"  # inputs gathered over the bounding box of their boxes
    PROJECT = "project"  # view ⊕ patch over the whole map
    FULL = "full"  # the operator on full per-query tensors


@dataclass(frozen=True, slots=True)
class Update:
    """The update form of a node: its state, strategy, uniform output box and read window."""

    state: State
    strategy: Strategy
    box: Size | None = None
    read: Size | None = None
    # Approximate only: the box is ``cut`` cells per side smaller than the exact one
    # (projective-field thresholding) and placed around the patch's centre inside it.
    cut: Size | None = None

    def __str__(self) -> str:
        text = ("≈" if self.cut is not None else "") + self.strategy.value
        if self.box is not None:
            text += f" box={self.box}"
        if self.read is not None:
            text += f" read={self.read}"
        if self.cut is not None:
            text += f" cut={self.cut}"
        return text


@dataclass(frozen=True, slots=True)
class Node:
    """An operator placed in a plan: its name (the fx node's), inputs and output schema."""

    name: str
    op: Operator
    inputs: tuple[str, ...]
    schema: Schema
    source: str = ""  # the model's module path or function, for messages and explain
    update: Update | None = field(default=None)

    def with_update(self, update: Update) -> Node:
        return replace(self, update=update)

    @property
    def state(self) -> State:
        if self.update is None:
            raise ValueError(f"node {self.name} has no update form yet")
        return self.update.state
