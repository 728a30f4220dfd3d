"""Hypothesis strategies: random CNNs (sequential and DAG) over small, non-square images, drawn
to reach the geometries where an incremental plan can go wrong.

Besides plain convolutions, pools and activations the blocks include what the box rules and
kernels must get right: pads that cannot be folded into a convolution (non-zero value, top or
left > 0, asymmetric), ``a − b``, ``a · b`` and ``a / b`` between two changed branches,
average pools with ``ceil_mode``, ``count_include_pad=False`` and ``divisor_override``, dilated
max pools, non-square pools and strides, convolution padding larger than ``k // 2``, max pools
whose padded windows see only negative values, and channel counts above the Triton kernels'
interpreter tile (16). Since the importer tracks layouts, the blocks also move the spatial
axes and work per position on channels: ConvNeXt-style channels-last blocks (permute, layer
norm, linear layers, layer scale), ShuffleNet-style channel splits and shuffles, channel
slices; nearest and bilinear upsampling by integer factors; and operators that run as the
exact fallback mid-network (group norm, reflect padding). Weights are drawn so that
occlusion moves the scores noticeably (a network that ignores the patch cannot tell a right
heatmap from a wrong one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import assume
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

# More output channels than the interpreter's 16-wide tile: the kernels' channel tiling runs.
WIDE = 18
# Block kinds; convolutions and pools twice, as their geometry is where boxes go wrong.
KINDS = ("conv", "conv", "pool", "pool", "bn", "act", "pad", "negpool", "depthwise", "residual",
         "inception", "se", "branches", "offset", "scale", "gate", "channels_last", "shuffle",
         "slice", "fallback", "upsample")  # fmt: skip
DAG_KINDS = ("residual", "inception", "se", "branches", "offset", "gate", "channels_last",
             "shuffle")  # fmt: skip


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


class TwoBranches(nn.Module):
    """``a ∘ b`` of two changed branches whose update boxes differ in size and position:
    ``a`` a 3×3 convolution, ``b`` a 1×5 (or 5×1) one; ``/`` divides by ``sigmoid(b) + 0.5``
    (a changed branch that stays away from zero)."""

    def __init__(self, cin: int, cout: int, op: str, tall: bool):
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(cin, cout, 3, padding=1)
        kernel, padding = ((5, 1), (2, 0)) if tall else ((1, 5), (0, 2))
        self.b = nn.Conv2d(cin, cout, kernel, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.a(x), self.b(x)
        if self.op == "sub":
            return a - b
        if self.op == "mul":
            return a * b
        return a / (torch.sigmoid(b) + 0.5)


class OffsetBranches(nn.Module):
    """``a + b`` of two convolutions over oppositely padded inputs: ``a``'s box lies up and left
    of the patch, ``b``'s down and right, so their bounding box is wider than either and must
    be shifted inward at the border."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(cin, cout, 3), nn.Conv2d(cin, cout, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.a(F.pad(x, (0, 2, 0, 2))) + self.b(F.pad(x, (2, 0, 2, 0)))


class SpatialGate(nn.Module):
    """``x · sigmoid(conv(x))`` with a one-channel gate (CBAM's spatial attention): a changed
    operand broadcast across the channels of another."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.gate(x))


class LayerScale(nn.Module):
    """``x · γ + β`` with learned per-channel tensors: clean operands broadcast against a
    changed one (ConvNeXt's layer scale)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels, 1, 1) + 0.5)
        self.beta = nn.Parameter(torch.randn(channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma + self.beta


class OffsetHead(nn.Module):
    """A global-pool head plus a learned offset per class: a clean input to a full operator."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, classes)
        self.offset = nn.Parameter(torch.randn(classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.mean((2, 3))) + self.offset


class ChannelsLast(nn.Module):
    """ConvNeXt's block: depthwise conv, then channels-last ``LayerNorm → Linear → GELU →
    Linear → ·γ`` (per position), permuted back and added to the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.up, self.down = nn.Linear(channels, 2 * channels), nn.Linear(2 * channels, channels)
        self.gamma = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.down(F.gelu(self.up(y))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class Shuffle(nn.Module):
    """ShuffleNetV2's unit: a 1×1 conv to ``2k`` channels, ``chunk(2)``, a conv on one half,
    ``cat``, then the channel shuffle ``view → transpose → view``."""

    def __init__(self, channels: int, half: int):
        super().__init__()
        self.expand = nn.Conv2d(channels, 2 * half, 1)
        self.branch = nn.Conv2d(half, half, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.expand(x).chunk(2, dim=1)
        y = torch.cat([a, F.relu(self.branch(b))], dim=1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ChannelSlice(nn.Module):
    """A channel slice and a selected channel (``x[:, :k]``, ``x[:, -1]``) recombined."""

    def forward(self, x: Tensor) -> Tensor:
        k = max(1, x.shape[1] // 2)
        return x[:, :k] * 2.0 - x[:, -1:].sigmoid()


class Fallback(nn.Module):
    """An operator no translator places in space, mid-network: group norm (statistics over
    the whole map) or reflect padding (+1 on each side)."""

    def __init__(self, channels: int, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = nn.GroupNorm(1, channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "groupnorm":
            return self.norm(x)
        return F.pad(x, (1, 1, 1, 1), mode="reflect")


class Upsampled(nn.Module):
    """Nearest or bilinear upsampling by integer factors (boxed by their own rule)."""

    def __init__(self, mode: str, scale: tuple[int, int]):
        super().__init__()
        self.mode, self.scale = mode, scale

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode=self.mode)


class Padded(nn.Module):
    """``F.pad`` with any sides and value, then a layer that reads the border: a convolution
    (foldable only when the value is 0), a pool or an activation."""

    def __init__(self, pad: tuple[int, int, int, int], value: float, then: nn.Module):
        super().__init__()
        self.pad, self.value, self.then = pad, value, then

    def forward(self, x: Tensor) -> Tensor:
        return self.then(F.pad(x, self.pad, value=self.value))


class Shifted(nn.Module):
    """``x − shift`` then a max pool with padding: whole padded windows of negative values,
    where a pool that pads with 0 instead of −∞ goes wrong."""

    def __init__(self, shift: float, pool: nn.MaxPool2d):
        super().__init__()
        self.shift, self.pool = shift, pool

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(x - self.shift)


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


def make_case(
    layers: list[nn.Module],
    image: Tensor,
    patch: tuple[int, int],
    stride: tuple[int, int],
    color: float | tuple[float, ...] = 0.0,
    description: str = "pinned",
    classes: int = 3,
    head: str = "mean",
) -> Case:
    """A case from hand-chosen layers (for ``@example``): a head is added and the weights are
    scaled as in ``cnn_cases``."""
    with torch.no_grad():
        shape = nn.Sequential(*layers).eval()(image[None]).shape[1:]
    model = _responsive(nn.Sequential(*layers, _head(head, *shape, classes)).eval(), image)
    return Case(model, image, patch, stride, color, description)


def _head(kind: str, channels: int, height: int, width: int, classes: int) -> nn.Module:
    if kind == "flatten":
        return FlattenHead(channels * height * width, classes)
    if kind == "offset":
        return OffsetHead(channels, classes)
    return Head(channels, classes, kind)


def _out(
    size: int, kernel: int, stride: int, pad: int, dilation: int = 1, ceil: bool = False
) -> int:
    """PyTorch's output size of a window operator with symmetric padding."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _responsive(model: nn.Module, image: Tensor) -> nn.Module:
    """Variance-preserving convolution weights and a head whose logits spread over a few units,
    so that occluding a patch moves the scores well above float rounding."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        logits = model(torch.stack([image, image.flip(-1), -image]))
        spread = float(logits.std()) if logits.numel() > 1 else 0.0
        if math.isfinite(spread) and spread > 1e-6:
            head.weight.mul_(2.0 / spread)
            head.bias.mul_(2.0 / spread)
    return model


@st.composite
def cnn_cases(
    draw: st.DrawFn,
    dag: bool | None = None,
    wide: bool = True,
    kinds: tuple[str, ...] | None = None,
    heads: tuple[str, ...] = ("mean", "adaptive", "flatten", "offset"),
) -> Case:
    """A random CNN with 2–5 blocks (of ``kinds``, default all), a global-pool or flatten
    head, and a workload."""
    channels = draw(st.integers(1, 3))
    height, width = draw(st.integers(7, 18)), draw(st.integers(7, 18))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    layers: list[nn.Module] = []
    names: list[str] = []
    c, h, w = channels, height, width
    kinds = list(KINDS if kinds is None else kinds)
    if dag is False:
        kinds = [k for k in kinds if k not in DAG_KINDS]
    for _ in range(draw(st.integers(2, 5))):
        kind = draw(st.sampled_from(kinds))
        layer, c2, h2, w2 = _block(draw, kind, c, h, w, wide)
        if layer is None or h2 < 1 or w2 < 1:
            continue
        layers.append(layer)
        names.append(kind)
        c, h, w = c2, h2, w2
    classes = draw(st.integers(2, 5))
    head = draw(st.sampled_from(list(heads)))
    layers.append(_head(head, c, h, w, classes))
    image = torch.randn(channels, height, width)
    model = _responsive(nn.Sequential(*layers).eval(), image)
    with torch.no_grad():  # a max pool whose windows all lie in its padding gives −∞, then NaN
        assume(bool(torch.isfinite(model(image[None])).all()))
    patch = (draw(st.integers(1, min(height, 6))), draw(st.integers(1, min(width, 6))))
    stride = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    per_channel = draw(st.booleans())
    values = st.floats(-2.0, 2.0, allow_nan=False, width=32)
    color = tuple(draw(values) for _ in range(channels)) if per_channel else draw(values)
    return Case(model, image, patch, stride, color, "+".join(names + [head]))


def _channels(draw: st.DrawFn, wide: bool) -> int:
    return draw(st.sampled_from([3, 2, WIDE, 4, 5, 6] if wide else [3, 2, 4, 5, 6]))


def _block(draw: st.DrawFn, kind: str, c: int, h: int, w: int, wide: bool):  # noqa: C901
    if kind == "conv":
        out = _channels(draw, wide)
        kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        dilation = draw(st.integers(1, 2))
        # padding may exceed k // 2: the output grows past the input and reads only padding
        ph, pw = draw(st.integers(0, kh // 2 + 1)), draw(st.integers(0, kw // 2 + 1))
        groups = draw(st.sampled_from([g for g in (1, 2) if c % g == 0 and out % g == 0]))
        conv = nn.Conv2d(
            c, out, (kh, kw), (sh, sw), (ph, pw), dilation, groups, bias=draw(st.booleans())
        )
        return conv, out, _out(h, kh, sh, ph, dilation), _out(w, kw, sw, pw, dilation)
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
        return _pool(draw, c, h, w)
    if kind == "negpool":
        k, stride = draw(st.integers(2, 3)), draw(st.integers(1, 2))
        pad, ceil = draw(st.integers(1, k // 2)), draw(st.booleans())
        pool = nn.MaxPool2d(k, stride, pad, ceil_mode=ceil)
        shift = draw(st.floats(3.0, 6.0, width=32))
        return (
            Shifted(shift, pool),
            c,
            _out(h, k, stride, pad, ceil=ceil),
            _out(w, k, stride, pad, ceil=ceil),
        )
    if kind == "pad":
        return _padded(draw, c, h, w)
    if kind == "residual":
        out, stride = draw(st.integers(2, 5)), draw(st.integers(1, 2))
        return Residual(c, out, stride), out, _out(h, 3, stride, 1), _out(w, 3, stride, 1)
    if kind == "se":
        return SqueezeExcite(c), c, h, w
    if kind == "offset":
        out = draw(st.integers(2, 4))
        return OffsetBranches(c, out), out, h, w
    if kind == "scale":
        return LayerScale(c), c, h, w
    if kind == "gate":
        return SpatialGate(c), c, h, w
    if kind == "branches":
        out = draw(st.integers(2, 4))
        op = draw(st.sampled_from(["sub", "mul", "div"]))
        return TwoBranches(c, out, op, draw(st.booleans())), out, h, w
    if kind == "channels_last":
        return ChannelsLast(c), c, h, w
    if kind == "shuffle":
        half = draw(st.integers(1, 3))
        return Shuffle(c, half), 2 * half, h, w
    if kind == "slice":
        return ChannelSlice(), max(1, c // 2), h, w
    if kind == "fallback":
        which = draw(st.sampled_from(["groupnorm", "reflect"]))
        grow = 0 if which == "groupnorm" or min(h, w) < 2 else 2
        return Fallback(c, which if grow else "groupnorm"), c, h + grow, w + grow
    if kind == "upsample":
        mode = draw(st.sampled_from(["nearest", "bilinear"]))
        sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        if h * sh > 20 or w * sw > 20:  # keep the maps small (Triton's interpreter is slow)
            return None, c, h, w
        return Upsampled(mode, (sh, sw)), c, h * sh, w * sw
    width = draw(st.integers(1, 3))
    return Inception(c, width), 4 * width, h, w


def _pool(draw: st.DrawFn, c: int, h: int, w: int):
    """Max or average pooling, square or not, with every option PyTorch's pools take. The
    average pool's divisor rules are drawn by name, so that each is drawn often."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if kh == kw == 1:
        kh = 2
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    kind = draw(st.sampled_from(["max", "avg_ceil", "avg_exclude_pad", "avg_override", "max_ceil"]))
    ceil = kind.endswith("ceil") or draw(st.booleans())
    dilation = draw(st.integers(1, 2)) if kind.startswith("max") else 1
    if kind.startswith("max"):
        pool: nn.Module = nn.MaxPool2d((kh, kw), (sh, sw), (ph, pw), dilation, ceil_mode=ceil)
    else:
        include = kind != "avg_exclude_pad"
        divisor = 3 if kind == "avg_override" else None
        pool = nn.AvgPool2d((kh, kw), (sh, sw), (ph, pw), ceil, include, divisor)
    return (
        pool,
        c,
        _out(h, kh, sh, ph, dilation, ceil),
        _out(w, kw, sw, pw, dilation, ceil),
    )


def _padded(draw: st.DrawFn, c: int, h: int, w: int):
    """A pad of any sides and value, then a convolution, a pool or an activation."""
    left, right, top, bottom = (draw(st.integers(0, 2)) for _ in range(4))
    value = draw(st.sampled_from([0.0, 1.0, -0.5, 2.0]))
    then = draw(st.sampled_from(["conv", "maxpool", "avgpool", "relu"]))
    hp, wp = h + top + bottom, w + left + right
    if then == "conv":
        k, stride, out = (
            draw(st.sampled_from([3, 5])),
            draw(st.integers(1, 2)),
            draw(st.integers(2, 5)),
        )
        layer: nn.Module = nn.Conv2d(c, out, k, stride)
        size = (out, _out(hp, k, stride, 0), _out(wp, k, stride, 0))
    elif then == "maxpool":
        layer = nn.MaxPool2d(2, 2, ceil_mode=True)
        size = (c, _out(hp, 2, 2, 0, ceil=True), _out(wp, 2, 2, 0, ceil=True))
    elif then == "avgpool":
        layer, size = nn.AvgPool2d(3, 1), (c, _out(hp, 3, 1, 0), _out(wp, 3, 1, 0))
    else:
        layer, size = nn.ReLU(), (c, hp, wp)
    return Padded((left, right, top, bottom), value, layer), *size


def pinned_cases() -> dict[str, Case]:
    """Geometries that once hid a bug from random draws, for ``@example`` (built with a fixed
    seed, so every run sees the same networks)."""
    torch.manual_seed(1234)
    return {
        # a pad that cannot be folded, with top/left > 0: its box moves by (top, left)
        "pad": make_case(
            [Padded((2, 1, 1, 1), 1.0, nn.Conv2d(2, 3, 3)), nn.ReLU()],
            torch.randn(2, 12, 11), (3, 3), (2, 2), description="pad(2,1,1,1)=1+conv",
        ),
        # two changed branches subtracted: the delta form must negate the second one
        "sub": make_case(
            [TwoBranches(2, 3, "sub", tall=False), nn.SiLU()],
            torch.randn(2, 10, 12), (3, 2), (2, 3), description="a−b",
        ),
        # the last ceil-mode window overhangs the padding: its divisor is smaller
        "avg_ceil": make_case(
            [nn.Conv2d(2, 3, 3, padding=1), nn.AvgPool2d(3, 2, 1, ceil_mode=True)],
            torch.randn(2, 8, 10), (2, 3), (2, 2), description="avgpool ceil",
        ),
        # clipped last windows along y, and along x a stride larger than the patch
        "clipped": make_case(
            [nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)],
            torch.randn(1, 11, 9), (4, 2), (3, 4), 0.5, description="clipped windows",
        ),
        # max pooling whose padded windows hold only negative values
        "negpool": make_case(
            [nn.Conv2d(2, 3, 3), Shifted(4.0, nn.MaxPool2d(3, 2, 1))],
            torch.randn(2, 11, 10), (3, 3), (2, 2), description="negative maxpool",
        ),
        # two boxes offset from each other: their union is shifted inward at the border
        "offset": make_case(
            [nn.Conv2d(2, 3, 3, padding=1), OffsetBranches(3, 3), nn.ReLU()],
            torch.randn(2, 10, 11), (3, 2), (1, 1), head="offset", description="offset a+b",
        ),
        # clean per-channel tensors broadcast against a changed map, and a clean offset added
        # to the logits
        "affine": make_case(
            [nn.Conv2d(2, 3, 3, padding=1), LayerScale(3), nn.SiLU()],
            torch.randn(2, 9, 8), (2, 3), (2, 2), head="offset", description="layer scale",
        ),
        # a one-channel gate broadcast over the channels it scales
        "gate": make_case(
            [nn.Conv2d(2, 4, 3, padding=1), SpatialGate(4), nn.ReLU()],
            torch.randn(2, 10, 9), (3, 3), (2, 3), description="spatial gate",
        ),
        # more output channels than one interpreter tile, grouped
        "wide": make_case(
            [nn.Conv2d(2, WIDE, 3, padding=1), nn.ReLU(), nn.Conv2d(WIDE, WIDE, 3, groups=2)],
            torch.randn(2, 9, 8), (3, 3), (3, 2), description="wide conv",
        ),
        # channels-last layer norm and linear layers between two permutes (ConvNeXt)
        "channels_last": make_case(
            [nn.Conv2d(2, 4, 3, padding=1), ChannelsLast(4), nn.ReLU()],
            torch.randn(2, 10, 9), (3, 2), (2, 2), description="channels-last block",
        ),
        # a channel split, concatenation and shuffle (ShuffleNetV2)
        "shuffle": make_case(
            [nn.Conv2d(2, 3, 3, padding=1), Shuffle(3, 2), ChannelSlice()],
            torch.randn(2, 9, 10), (2, 3), (2, 2), description="shuffle + slice",
        ),
        # bilinear upsampling: s·(b + 1) rows from b + 2 input rows, clamped at the border
        "bilinear": make_case(
            [nn.Conv2d(2, 3, 3, padding=1), Upsampled("bilinear", (2, 3)), nn.Conv2d(3, 3, 3)],
            torch.randn(2, 8, 7), (3, 3), (2, 2), description="bilinear ×2×3",
        ),
        # an operator that runs as the exact fallback between local ones
        "fallback": make_case(
            [nn.Conv2d(2, 3, 3, padding=1), Fallback(3, "groupnorm"), nn.Conv2d(3, 3, 3)],
            torch.randn(2, 8, 7), (3, 3), (2, 2), description="group norm fallback",
        ),
    }  # fmt: skip
