"""Small value objects shared by the IR, the rules and the runtime.

Everything here is immutable and holds plain Python integers; per-query arrays live in
``compiler.boxes``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


def round_half_away(value: float) -> int:
    """C's ``round`` (the prototype's), not Python's banker's rounding.

    >>> round_half_away(2.5), round_half_away(3.5), round_half_away(2.4999)
    (3, 4, 2)
    """
    return math.floor(value + 0.5)


@dataclass(frozen=True, slots=True)
class Size2:
    """A height and width in cells.

    >>> str(Size2(16, 8)), Size2(16, 8).area
    ('16×8', 128)
    """

    h: int
    w: int

    @property
    def area(self) -> int:
        return self.h * self.w

    def __str__(self) -> str:
        return f"{self.h}×{self.w}"

    @classmethod
    def of(cls, value: int | tuple[int, ...] | list[int]) -> Size2:
        """Build from an int (square) or a 1- or 2-element sequence.

        >>> Size2.of(3), Size2.of((1, 7))
        (Size2(h=3, w=3), Size2(h=1, w=7))
        """
        if isinstance(value, int):
            return cls(value, value)
        values = tuple(int(v) for v in value)
        if len(values) == 1:
            return cls(values[0], values[0])
        return cls(values[0], values[1])


@dataclass(frozen=True, slots=True)
class Padding:
    """Constant padding on the four sides of a feature map.

    >>> str(Padding(0, 1, 0, 1))
    't0 b1 l0 r1'
    """

    top: int
    bottom: int
    left: int
    right: int

    @classmethod
    def symmetric(cls, size: Size2) -> Padding:
        return cls(size.h, size.h, size.w, size.w)

    @property
    def is_zero(self) -> bool:
        return self.top == self.bottom == self.left == self.right == 0

    def __add__(self, other: Padding) -> Padding:
        return Padding(
            self.top + other.top,
            self.bottom + other.bottom,
            self.left + other.left,
            self.right + other.right,
        )

    def __str__(self) -> str:
        if self.top == self.bottom == self.left == self.right:
            return str(self.top)
        return f"t{self.top} b{self.bottom} l{self.left} r{self.right}"


@dataclass(frozen=True, slots=True)
class Window:
    """Geometry of a sliding-window operator (convolution or pooling) over H and W.

    >>> same = Window(Size2(3, 3), Size2(2, 2), Size2(1, 1), Padding(0, 1, 0, 1))
    >>> same.output_size(Size2(224, 224))
    Size2(h=112, w=112)
    >>> ceil = Window(Size2(3, 3), Size2(2, 2), Size2(1, 1), Padding(0, 0, 0, 0), True)
    >>> ceil.output_size(Size2(8, 8))
    Size2(h=4, w=4)
    """

    kernel: Size2
    stride: Size2
    dilation: Size2
    padding: Padding
    ceil_mode: bool = False

    @property
    def extent(self) -> Size2:
        """The span of input cells one output cell reads (dilated kernel)."""
        return Size2(
            self.dilation.h * (self.kernel.h - 1) + 1,
            self.dilation.w * (self.kernel.w - 1) + 1,
        )

    def output_size(self, size: Size2) -> Size2:
        """PyTorch's output size, including its ceil-mode rule."""
        p = self.padding
        return Size2(
            _output_dim(size.h, self.extent.h, self.stride.h, p.top, p.bottom, self.ceil_mode),
            _output_dim(size.w, self.extent.w, self.stride.w, p.left, p.right, self.ceil_mode),
        )

    def __str__(self) -> str:
        text = f"k={self.kernel} s={self.stride} p={self.padding}"
        if self.dilation != Size2(1, 1):
            text += f" d={self.dilation}"
        if self.ceil_mode:
            text += " ceil"
        return text


def _output_dim(size: int, extent: int, stride: int, before: int, after: int, ceil: bool) -> int:
    span = size + before + after - extent
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    # PyTorch drops a last ceil-mode window that would start inside the right padding.
    if ceil and (out - 1) * stride >= size + before:
        out -= 1
    return out


@dataclass(frozen=True, slots=True)
class Schema:
    """Shape of one image's value at a node (the batch axis excluded).

    >>> Schema((64, 112, 112)).is_spatial, str(Schema((1000,)))
    (True, '1000')
    """

    shape: tuple[int, ...]
    spatial: bool = True  # a [C, H, W] shape is a feature map unless said otherwise (tokens)

    @property
    def is_spatial(self) -> bool:
        return len(self.shape) == 3 and self.spatial

    @property
    def channels(self) -> int:
        return self.shape[0] if self.shape else 1  # one value per image: one channel

    @property
    def size(self) -> Size2:
        return Size2(self.shape[1], self.shape[2])

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def __str__(self) -> str:
        return "×".join(str(d) for d in self.shape) or "scalar"


class Agg(enum.Enum):
    """The aggregate of a pooling group-by."""

    MAX = "max"
    AVG = "avg"


class Score(enum.Enum):
    """What a heatmap cell holds: the softmax probability or the raw model output."""

    PROB = "prob"
    LOGIT = "logit"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the image's spatial axes are in a tensor the model computes.

    ``shape`` is the per-image shape (batch axis excluded) and ``h``, ``w`` index its rows and
    columns axes. The IR holds every such tensor in its canonical form ``[C, H, W]``: the
    spatial axes moved last, the others flattened in order into ``C``. Layout operations that
    keep that order (channels-last permutes and back, reshapes that split or merge channel
    axes) change only the layout, not the relation.

    >>> last = Layout((7, 7, 96), 0, 1)
    >>> last.channel_shape, last.canonical, last.is_standard
    ((96,), (96, 7, 7), False)
    >>> Layout((96, 7, 7), 1, 2).is_standard
    True
    """

    shape: tuple[int, ...]
    h: int
    w: int

    @classmethod
    def standard(cls, shape: tuple[int, ...]) -> Layout:
        """``[C, H, W]`` itself."""
        return cls(tuple(shape), len(shape) - 2, len(shape) - 1)

    @property
    def channel_axes(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.shape)) if i not in (self.h, self.w))

    @property
    def channel_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[i] for i in self.channel_axes)

    @property
    def canonical(self) -> tuple[int, int, int]:
        return (math.prod(self.channel_shape), self.shape[self.h], self.shape[self.w])

    @property
    def is_standard(self) -> bool:
        return len(self.shape) == 3 and (self.h, self.w) == (1, 2)

    def with_shape(self, shape: tuple[int, ...]) -> Layout:
        return Layout(tuple(shape), self.h, self.w)

    def __str__(self) -> str:
        names = ["c"] * len(self.shape)
        names[self.h], names[self.w] = "h", "w"
        return "".join(names)
