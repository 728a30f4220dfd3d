"""Small value objects shared by the IR, the rules and the runtime.

Everything here is immutable and holds plain Python integers; per-query arrays live in
``compiler.boxes``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass


def round_half_away(value: float) -> int:
    """C's ``round`` (the prototype's), not Python's banker's rounding.

    >>> round_half_away(2.5), round_half_away(3.5), round_half_away(2.4999)
    (3, 4, 2)
    """
    return math.floor(value + 0.5)


@dataclass(frozen=True, slots=True, init=False)
class Size:
    """Cells along each of ``d`` spatial axes (1: a signal, 2: an image, 3: a volume or a clip).

    >>> str(Size(16, 8)), Size(16, 8).area, Size(4, 5, 6).d
    ('16×8', 128, 3)
    >>> Size(4, 5, 6).map(lambda a: a * 2)
    Size(8, 10, 12)
    """

    dims: tuple[int, ...]

    def __init__(self, *dims: int) -> None:
        object.__setattr__(self, "dims", tuple(int(v) for v in dims))

    @property
    def d(self) -> int:
        """The number of spatial axes."""
        return len(self.dims)

    @property
    def area(self) -> int:
        """Cells in all: length, area or volume."""
        return math.prod(self.dims)

    @property
    def h(self) -> int:
        """The rows of a 2-D size (the image axes' names; other ranks index ``dims``)."""
        return self._axis(0)

    @property
    def w(self) -> int:
        """The columns of a 2-D size."""
        return self._axis(1)

    def _axis(self, index: int) -> int:
        if self.d != 2:
            raise AttributeError(f"a {self.d}-D size has no rows and columns: use .dims")
        return self.dims[index]

    def map(self, function: Callable[..., int], *others: Size) -> Size:
        """``function`` applied axis by axis (to this size's and the ``others``' cells)."""
        return Size(*(function(*values) for values in zip(self.dims, *(o.dims for o in others))))

    def __iter__(self) -> Iterator[int]:
        return iter(self.dims)

    def __len__(self) -> int:
        return len(self.dims)

    def __getitem__(self, index: int) -> int:
        return self.dims[index]

    def __str__(self) -> str:
        return "×".join(str(v) for v in self.dims)

    def __repr__(self) -> str:
        return f"Size({', '.join(str(v) for v in self.dims)})"

    @classmethod
    def of(cls, value: int | tuple[int, ...] | list[int], d: int = 2) -> Size:
        """Build from an int (the same along every axis) or a sequence of ``d`` (or one).

        >>> Size.of(3), Size.of((1, 7)), Size.of(2, d=3)
        (Size(3, 3), Size(1, 7), Size(2, 2, 2))
        """
        if isinstance(value, int):
            return cls(*([value] * d))
        values = tuple(int(v) for v in value)
        if len(values) == 1:
            return cls(*(values * d))
        return cls(*values)

    @classmethod
    def ones(cls, d: int) -> Size:
        return cls(*([1] * d))


Size2 = Size  # the name the 2-D code knew; a Size of two axes


@dataclass(frozen=True, slots=True)
class Padding:
    """Constant padding before and after each spatial axis of a feature map.

    >>> str(Padding((0, 0), (1, 1))), str(Padding((1, 1), (1, 1))), str(Padding((0,), (2,)))
    ('t0 b1 l0 r1', '1', 'b(0) a(2)')
    """

    before: tuple[int, ...]
    after: tuple[int, ...]

    @classmethod
    def zero(cls, d: int) -> Padding:
        return cls((0,) * d, (0,) * d)

    @classmethod
    def sides(cls, top: int, bottom: int, left: int, right: int) -> Padding:
        """A 2-D padding by its sides."""
        return cls((top, left), (bottom, right))

    @classmethod
    def symmetric(cls, size: Size) -> Padding:
        return cls(size.dims, size.dims)

    @property
    def d(self) -> int:
        return len(self.before)

    @property
    def is_zero(self) -> bool:
        return not any(self.before) and not any(self.after)

    @property
    def top(self) -> int:
        return self._side(self.before, 0)

    @property
    def bottom(self) -> int:
        return self._side(self.after, 0)

    @property
    def left(self) -> int:
        return self._side(self.before, 1)

    @property
    def right(self) -> int:
        return self._side(self.after, 1)

    def _side(self, sides: tuple[int, ...], index: int) -> int:
        if self.d != 2:
            raise AttributeError(f"a {self.d}-D padding has no sides: use before/after")
        return sides[index]

    def torch(self) -> tuple[int, ...]:
        """``F.pad``'s argument: the last axis first, before then after."""
        return tuple(v for b, a in zip(reversed(self.before), reversed(self.after)) for v in (b, a))

    def __add__(self, other: Padding) -> Padding:
        return Padding(
            tuple(a + b for a, b in zip(self.before, other.before)),
            tuple(a + b for a, b in zip(self.after, other.after)),
        )

    def __str__(self) -> str:
        values = set(self.before) | set(self.after)
        if len(values) == 1:
            return str(values.pop())
        if self.d == 2:
            return f"t{self.top} b{self.bottom} l{self.left} r{self.right}"
        if self.before == self.after:
            return "×".join(str(v) for v in self.before)
        before = ",".join(str(v) for v in self.before)
        after = ",".join(str(v) for v in self.after)
        return f"b({before}) a({after})"


@dataclass(frozen=True, slots=True)
class Window:
    """Geometry of a sliding-window operator (convolution or pooling) over the spatial axes.

    >>> same = Window(Size(3, 3), Size(2, 2), Size(1, 1), Padding((0, 0), (1, 1)))
    >>> same.output_size(Size(224, 224))
    Size(112, 112)
    >>> ceil = Window(Size(3, 3), Size(2, 2), Size(1, 1), Padding.zero(2), True)
    >>> ceil.output_size(Size(8, 8))
    Size(4, 4)
    >>> cube = Window(Size(3, 3, 3), Size(1, 2, 2), Size(1, 1, 1), Padding.zero(3))
    >>> cube.output_size(Size(8, 8, 8))
    Size(6, 3, 3)
    """

    kernel: Size
    stride: Size
    dilation: Size
    padding: Padding
    ceil_mode: bool = False

    @property
    def d(self) -> int:
        return self.kernel.d

    @property
    def extent(self) -> Size:
        """The span of input cells one output cell reads (dilated kernel)."""
        return self.dilation.map(lambda d, k: d * (k - 1) + 1, self.kernel)

    def output_size(self, size: Size) -> Size:
        """PyTorch's output size, including its ceil-mode rule."""
        p = self.padding
        return Size(*(
            _output_dim(n, e, s, b, a, self.ceil_mode)
            for n, e, s, b, a in zip(size, self.extent, self.stride, p.before, p.after)
        ))  # fmt: skip

    def __str__(self) -> str:
        text = f"k={self.kernel} s={self.stride} p={self.padding}"
        if self.dilation != Size.ones(self.d):
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

    >>> Schema((64, 112, 112)).is_spatial, str(Schema((1000,))), Schema((8, 4, 5, 6)).d
    (True, '1000', 3)
    """

    shape: tuple[int, ...]
    spatial: bool = True  # a [C, *spatial] shape is a feature map unless said otherwise (tokens)

    @property
    def is_spatial(self) -> bool:
        return len(self.shape) >= 2 and self.spatial

    @property
    def d(self) -> int:
        """Spatial axes of a feature map ``[C, *spatial]``."""
        return len(self.shape) - 1

    @property
    def channels(self) -> int:
        return self.shape[0] if self.shape else 1  # one value per image: one channel

    @property
    def size(self) -> Size:
        return Size(*self.shape[1:])

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

    ``shape`` is the per-image shape (batch axis excluded) and ``axes`` index its spatial axes,
    in order. The IR holds every such tensor in its canonical form ``[C, *spatial]``: the
    spatial axes moved last, the others flattened in order into ``C``. Layout operations that
    keep that order (channels-last permutes and back, reshapes that split or merge channel
    axes) change only the layout, not the relation.

    >>> last = Layout((7, 7, 96), (0, 1))
    >>> last.channel_shape, last.canonical, last.is_standard, str(last)
    ((96,), (96, 7, 7), False, 'hwc')
    >>> Layout((96, 7, 7), (1, 2)).is_standard, Layout.standard((4, 8, 8, 8)).axes
    (True, (1, 2, 3))
    """

    shape: tuple[int, ...]
    axes: tuple[int, ...]

    @classmethod
    def standard(cls, shape: tuple[int, ...]) -> Layout:
        """``[C, *spatial]`` itself."""
        return cls(tuple(shape), tuple(range(1, len(shape))))

    @property
    def d(self) -> int:
        return len(self.axes)

    @property
    def h(self) -> int:
        """The rows axis of a 2-D layout."""
        return self._axis(0)

    @property
    def w(self) -> int:
        """The columns axis of a 2-D layout."""
        return self._axis(1)

    def _axis(self, index: int) -> int:
        if self.d != 2:
            raise AttributeError(f"a {self.d}-D layout has no rows and columns: use .axes")
        return self.axes[index]

    @property
    def channel_axes(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.shape)) if i not in self.axes)

    @property
    def channel_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[i] for i in self.channel_axes)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[i] for i in self.axes)

    @property
    def canonical(self) -> tuple[int, ...]:
        return (math.prod(self.channel_shape), *self.spatial_shape)

    @property
    def is_standard(self) -> bool:
        return len(self.shape) == self.d + 1 and self.axes == tuple(range(1, self.d + 1))

    def with_shape(self, shape: tuple[int, ...]) -> Layout:
        return Layout(tuple(shape), self.axes)

    def __str__(self) -> str:
        names = ["c"] * len(self.shape)
        spatial = {1: "l", 2: "hw", 3: "dhw"}.get(self.d)
        for index, axis in enumerate(self.axes):
            names[axis] = spatial[index] if spatial else f"s{index}"
        return "".join(names)
