"""Hypothesis strategies for signals and volumes: random CNNs in one or three spatial axes.

The 2-D strategies (``tests/strategies.py``) exercise every block an image network uses; here
the same geometry is drawn per axis of a signal ``[C, L]`` or a volume ``[C, D, H, W]``:
convolutions with a kernel, stride, padding and dilation per axis (grouped, depthwise), max
and average pools with every option torch's 1-D and 3-D pools take, pads of any sides and
value, nearest and (tri)linear upsampling, residual blocks and two changed branches combined
(``a − b``, ``a · b``), a squeeze-excite gate and a group norm that runs as the exact fallback.
Shapes stay small (the oracle re-runs the model once per window) and the weights are scaled
so that occlusion moves the scores well above float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}
KINDS = ("conv", "conv", "pool", "pool", "bn", "act", "pad", "depthwise", "residual",
         "branches", "se", "fallback", "upsample")  # fmt: skip
# Sizes per axis: a signal is long, a volume short along each of its three axes.
SIZES = {1: (8, 40), 3: (4, 9)}
ACTIVATIONS = (nn.ReLU, nn.SiLU, nn.Hardswish, lambda: nn.LeakyReLU(0.1))


def _axes(draw: st.DrawFn, d: int, low: int, high: int) -> tuple[int, ...]:
    return tuple(draw(st.integers(low, high)) for _ in range(d))


def _bn(d: int, channels: int) -> nn.Module:
    bn = BATCH_NORM[d](channels, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn


class Residual(nn.Module):
    """conv(k=3, s)-bn-relu-conv(k=3) + shortcut (identity, or a strided 1-conv)."""

    def __init__(self, d: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = CONV[d](cin, cout, 3, stride, 1, bias=False)
        self.bn = _bn(d, cout)
        self.conv2 = CONV[d](cout, cout, 3, 1, 1)
        self.shortcut = (
            nn.Identity() if stride == 1 and cin == cout else CONV[d](cin, cout, 1, stride)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(F.relu(self.bn(self.conv1(x)))) + self.shortcut(x))


class Branches(nn.Module):
    """``a − b`` or ``a · b`` of a cube-kernel convolution and one long along a single axis:
    two update boxes of different shapes."""

    def __init__(self, d: int, cin: int, cout: int, op: str, axis: int):
        super().__init__()
        self.op = op
        self.a = CONV[d](cin, cout, 3, padding=1)
        kernel = tuple(5 if i == axis else 1 for i in range(d))
        self.b = CONV[d](cin, cout, kernel, padding=tuple(k // 2 for k in kernel))

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.a(x), self.b(x)
        return a - b if self.op == "sub" else a * b


class SqueezeExcite(nn.Module):
    """Channel gating by the mean over every spatial axis."""

    def __init__(self, d: int, channels: int):
        super().__init__()
        self.axes = tuple(range(2, 2 + d))
        self.reduce, self.expand = CONV[d](channels, 2, 1), CONV[d](2, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        summary = x.mean(self.axes, keepdim=True)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(summary))))


class Padded(nn.Module):
    """``F.pad`` with any sides (two per axis) and value, then a convolution."""

    def __init__(self, pad: tuple[int, ...], value: float, then: nn.Module):
        super().__init__()
        self.pad, self.value, self.then = pad, value, then

    def forward(self, x: Tensor) -> Tensor:
        return self.then(F.pad(x, self.pad, value=self.value))


class Upsampled(nn.Module):
    def __init__(self, mode: str, scale: tuple[int, ...]):
        super().__init__()
        self.mode, self.scale = mode, scale

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode=self.mode)


class Head(nn.Module):
    """The mean over every spatial axis, or a flatten, then a linear layer."""

    def __init__(self, d: int, features: int, classes: int, flatten: bool):
        super().__init__()
        self.axes, self.flatten = tuple(range(2, 2 + d)), flatten
        self.fc = nn.Linear(features, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(x, 1) if self.flatten else x.mean(self.axes))


@dataclass
class Case:
    """A random network over ``d`` spatial axes and the occlusion workload to run on it."""

    model: nn.Module
    image: Tensor
    patch: tuple[int, ...]
    stride: tuple[int, ...]
    color: float | tuple[float, ...]
    description: str

    def __repr__(self) -> str:
        return (
            f"Case({self.description}; input {list(self.image.shape)}, patch {self.patch}, "
            f"stride {self.stride}, color {self.color})"
        )


def _responsive(model: nn.Module, image: Tensor) -> nn.Module:
    """Variance-preserving convolution weights and a head whose logits spread over a few units."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                module.weight.normal_(0.0, math.sqrt(2.0 / module.weight[0].numel()))
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        spread = float(model(torch.stack([image, image.flip(-1), -image])).std())
        if math.isfinite(spread) and spread > 1e-6:
            head.weight.mul_(2.0 / spread)
            head.bias.mul_(2.0 / spread)
    return model


@st.composite
def nd_cases(draw: st.DrawFn, d: int) -> Case:
    """A random CNN over ``d`` spatial axes (1 or 3) with 2–4 blocks, a head and a workload."""
    channels = draw(st.integers(1, 3))
    low, high = SIZES[d]
    size = _axes(draw, d, low, high)
    torch.manual_seed(draw(st.integers(0, 2**16)))
    layers: list[nn.Module] = []
    names: list[str] = []
    c, shape = channels, size
    for _ in range(draw(st.integers(2, 4))):
        kind = draw(st.sampled_from(KINDS))
        layer = _block(draw, d, kind, c)
        try:  # the geometry torch accepts, and the map it makes
            with torch.no_grad():
                out = layer.eval()(torch.zeros(1, c, *shape))
        except RuntimeError:
            continue
        if min(out.shape[2:]) < 1 or out[0, 0].numel() > (48 if d == 1 else 512):
            continue  # keep the maps small
        layers.append(layer)
        names.append(kind)
        c, shape = out.shape[1], tuple(out.shape[2:])
    flatten = draw(st.booleans()) and math.prod(shape) <= 64
    layers.append(Head(d, c * math.prod(shape) if flatten else c, draw(st.integers(2, 4)), flatten))
    image = torch.randn(channels, *size)
    model = _responsive(nn.Sequential(*layers).eval(), image)
    patch = tuple(draw(st.integers(1, min(n, 6 if d == 1 else 3))) for n in size)
    stride = _axes(draw, d, 1, 4 if d == 1 else 3)
    values = st.floats(-2.0, 2.0, allow_nan=False, width=32)
    color = tuple(draw(values) for _ in range(channels)) if draw(st.booleans()) else draw(values)
    head = "flatten" if flatten else "mean"
    return Case(model, image, patch, stride, color, "+".join([*names, head]))


def _block(draw: st.DrawFn, d: int, kind: str, c: int) -> nn.Module:  # noqa: C901
    if kind == "conv":
        out = draw(st.sampled_from([2, 3, 4, 5]))
        kernel, stride = _axes(draw, d, 1, 4), _axes(draw, d, 1, 2)
        dilation = draw(st.integers(1, 2))
        padding = tuple(draw(st.integers(0, k // 2 + 1)) for k in kernel)
        groups = draw(st.sampled_from([g for g in (1, 2) if c % g == 0 and out % g == 0]))
        return CONV[d](c, out, kernel, stride, padding, dilation, groups, bias=draw(st.booleans()))
    if kind == "depthwise":
        return CONV[d](c, c, 3, draw(st.integers(1, 2)), 1, groups=c, bias=False)
    if kind == "bn":
        return _bn(d, c)
    if kind == "act":
        return draw(st.sampled_from(ACTIVATIONS))()
    if kind == "pool":
        return _pool(draw, d)
    if kind == "pad":
        sides = _axes(draw, 2 * d, 0, 2)
        value = draw(st.sampled_from([0.0, 1.0, -0.5]))
        return Padded(sides, value, CONV[d](c, draw(st.integers(2, 4)), 3))
    if kind == "residual":
        return Residual(d, c, draw(st.integers(2, 4)), draw(st.integers(1, 2)))
    if kind == "branches":
        out, op = draw(st.integers(2, 4)), draw(st.sampled_from(["sub", "mul"]))
        return Branches(d, c, out, op, draw(st.integers(0, d - 1)))
    if kind == "se":
        return SqueezeExcite(d, c)
    if kind == "fallback":
        return nn.GroupNorm(1, c)
    return Upsampled(draw(st.sampled_from(["nearest", LINEAR[d]])), _axes(draw, d, 1, 2))


def _pool(draw: st.DrawFn, d: int) -> nn.Module:
    """Max or average pooling with a window, stride and padding per axis; ceil mode, padding
    excluded from the divisor, a divisor override (3-D only: torch's 1-D pool has none) and
    dilated max pools."""
    kernel = _axes(draw, d, 1, 3)
    if max(kernel) == 1:
        kernel = (2, *kernel[1:])
    stride = _axes(draw, d, 1, 2)
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    ceil = draw(st.booleans())
    kind = draw(st.sampled_from(["max", "avg", "avg_exclude_pad", "avg_override"]))
    if kind == "max":
        return MAX_POOL[d](kernel, stride, padding, draw(st.integers(1, 2)), ceil_mode=ceil)
    if d == 1:
        return nn.AvgPool1d(kernel, stride, padding, ceil, kind != "avg_exclude_pad")
    divisor = 3 if kind == "avg_override" else None
    return nn.AvgPool3d(kernel, stride, padding, ceil, kind != "avg_exclude_pad", divisor)
