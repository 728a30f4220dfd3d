"""Hypothesis strategies: random CNNs (sequential and DAG) over small, non-square images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "leaky": lambda: nn.LeakyReLU(0.1),
    "hardswish": nn.Hardswish,
    "sigmoid": nn.Sigmoid,
}


def _bn(channels: int) -> nn.BatchNorm2d:
    """A batch norm with non-trivial statistics and affine parameters."""
    bn = nn.BatchNorm2d(channels, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn


class Residual(nn.Module):
    """conv3×3(s)-bn-relu-conv3×3-bn + shortcut (identity, or strided 1×1 conv + bn)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class Inception(nn.Module):
    """Branches 1×1 | 1×7→7×1 | 5×5 | avg-pool 3×3 → 1×1, concatenated on channels."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.b1 = nn.Conv2d(cin, width, 1)
        self.b7a = nn.Conv2d(cin, width, (1, 7), padding=(0, 3))
        self.b7b = nn.Conv2d(width, width, (7, 1), padding=(3, 0))
        self.b5 = nn.Conv2d(cin, width, 5, padding=2)
        self.bp = nn.Conv2d(cin, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        pool = F.avg_pool2d(x, 3, 1, 1)
        return torch.cat(
            [self.b1(x), self.b7b(F.relu(self.b7a(x))), F.silu(self.b5(x)), self.bp(pool)], dim=1
        )


class SqueezeExcite(nn.Module):
    """Channel gating by a global summary: everything after it depends on the whole image."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, 2, 1)
        self.expand = nn.Conv2d(2, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return x * scale * 0.5 - 0.1


class AsymmetricPadConv(nn.Module):
    """``F.pad`` with unequal sides (TensorFlow "SAME"-style) followed by a valid conv."""

    def __init__(
        self, cin: int, cout: int, pad: tuple[int, int, int, int], kernel: int, stride: int
    ):
        super().__init__()
        self.pad = pad
        self.conv = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


class Head(nn.Module):
    def __init__(self, channels: int, classes: int, pool: str):
        super().__init__()
        self.pool = pool
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.mean((2, 3)) if self.pool == "mean" else torch.flatten(self.gap(x), 1)
        return self.fc(x)


class FlattenHead(nn.Module):
    def __init__(self, features: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(features, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(x, 1))


@dataclass
class Case:
    """A random network and the occlusion workload to run on it."""

    model: nn.Module
    image: Tensor
    patch: tuple[int, int]
    stride: tuple[int, int]
    color: float | tuple[float, ...]
    description: str

    def __repr__(self) -> str:
        return (
            f"Case({self.description}; image {list(self.image.shape)}, patch {self.patch}, "
            f"stride {self.stride}, color {self.color})"
        )


def _out(
    size: int, kernel: int, stride: int, pad: int, dilation: int = 1, ceil: bool = False
) -> int:
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@st.composite
def cnn_cases(draw: st.DrawFn, dag: bool | None = None) -> Case:
    """A random CNN with 2–5 blocks, a global-pool or flatten head, and a workload."""
    channels = draw(st.integers(1, 3))
    height, width = draw(st.integers(7, 18)), draw(st.integers(7, 18))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    layers: list[nn.Module] = []
    names: list[str] = []
    c, h, w = channels, height, width
    kinds = ["conv", "bn", "act", "pool", "pad_conv", "residual", "inception", "depthwise", "se"]
    if dag is False:
        kinds = [k for k in kinds if k not in ("residual", "inception", "se")]
    for _ in range(draw(st.integers(2, 5))):
        kind = draw(st.sampled_from(kinds))
        layer, c2, h2, w2 = _block(draw, kind, c, h, w)
        if layer is None or h2 < 1 or w2 < 1:
            continue
        layers.append(layer)
        names.append(kind)
        c, h, w = c2, h2, w2
    classes = draw(st.integers(2, 5))
    head = draw(st.sampled_from(["mean", "adaptive", "flatten"]))
    layers.append(FlattenHead(c * h * w, classes) if head == "flatten" else Head(c, classes, head))
    model = nn.Sequential(*layers).eval()
    patch = (draw(st.integers(1, min(height, 6))), draw(st.integers(1, min(width, 6))))
    stride = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    per_channel = draw(st.booleans())
    values = st.floats(-2.0, 2.0, allow_nan=False, width=32)
    color = tuple(draw(values) for _ in range(channels)) if per_channel else draw(values)
    image = torch.randn(channels, height, width)
    return Case(model, image, patch, stride, color, "+".join(names + [head]))


def _block(draw: st.DrawFn, kind: str, c: int, h: int, w: int):  # noqa: C901
    if kind == "conv":
        out = draw(st.integers(2, 6))
        kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        stride, dilation = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
        groups = draw(st.sampled_from([g for g in (1, 2) if c % g == 0 and out % g == 0]))
        conv = nn.Conv2d(
            c, out, (kh, kw), stride, (ph, pw), dilation, groups, bias=draw(st.booleans())
        )
        return conv, out, _out(h, kh, stride, ph, dilation), _out(w, kw, stride, pw, dilation)
    if kind == "depthwise":
        k = draw(st.sampled_from([3, 5]))
        stride = draw(st.integers(1, 2))
        conv = nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
        return conv, c, _out(h, k, stride, k // 2), _out(w, k, stride, k // 2)
    if kind == "bn":
        return _bn(c), c, h, w
    if kind == "act":
        return ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))](), c, h, w
    if kind == "pool":
        k, stride = draw(st.integers(2, 3)), draw(st.integers(1, 2))
        pad, ceil = draw(st.integers(0, k // 2)), draw(st.booleans())
        if draw(st.booleans()):
            pool: nn.Module = nn.MaxPool2d(k, stride, pad, ceil_mode=ceil)
        else:
            pool = nn.AvgPool2d(
                k, stride, pad, ceil_mode=ceil, count_include_pad=draw(st.booleans())
            )
        return pool, c, _out(h, k, stride, pad, ceil=ceil), _out(w, k, stride, pad, ceil=ceil)
    if kind == "pad_conv":
        pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
        k, stride = draw(st.sampled_from([3, 5])), draw(st.integers(1, 2))
        out = draw(st.integers(2, 5))
        left, right, top, bottom = pad
        return (
            AsymmetricPadConv(c, out, pad, k, stride),
            out,
            _out(h + top + bottom, k, stride, 0),
            _out(w + left + right, k, stride, 0),
        )
    if kind == "residual":
        out, stride = draw(st.integers(2, 5)), draw(st.integers(1, 2))
        return Residual(c, out, stride), out, _out(h, 3, stride, 1), _out(w, 3, stride, 1)
    if kind == "se":
        return SqueezeExcite(c), c, h, w
    width = draw(st.integers(1, 3))
    return Inception(c, width), 4 * width, h, w
