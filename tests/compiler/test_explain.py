"""Golden explain texts: deterministic, and they change only on purpose.

Regenerate after an intended change with ``KRYPTON_UPDATE_GOLDEN=1 pytest tests/compiler``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import krypton_ql as kql

GOLDEN = Path(__file__).parent.parent / "golden"


class TinyResNet(nn.Module):
    """A stem with TensorFlow padding, a strided residual block, global pool and linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(4, 8, 1, stride=2)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn(self.stem(F.pad(x, (0, 1, 0, 1)))))
        y = self.conv2(F.relu(self.conv1(x))) + self.down(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.pool(y), 1), 1))


@pytest.mark.parametrize("verbose", [False, True], ids=["plain", "verbose"])
def test_golden_explain(verbose: bool) -> None:
    text = kql.explain(
        TinyResNet().eval(),
        (3, 32, 30),
        patch=6,
        stride=4,
        batch_size=16,
        memory_budget=1 << 20,
        verbose=verbose,
        sql=not verbose,
    )
    path = GOLDEN / f"tiny_resnet_{'verbose' if verbose else 'plain'}.txt"
    if os.environ.get("KRYPTON_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_explain_is_deterministic_across_compilations() -> None:
    texts = {kql.explain(TinyResNet().eval(), (3, 32, 30), patch=6, batch_size=4) for _ in range(2)}
    assert len(texts) == 1


def _head(channels: int) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3)]


@pytest.mark.parametrize(
    "name",
    ["convnext_block", "channel_shuffle", "upsampling", "fallback"],
)
def test_golden_explain_of_layout_and_fallback_blocks(name: str) -> None:
    """The logical and rewritten plans of a ConvNeXt block (permutes cost nothing; layer norm
    and linear layers run per position, boxed), a ShuffleNet unit (split, concat, shuffle),
    a nearest upsampling (box ×2) and a group norm (the exact fallback, marked in explain)."""
    from tests.strategies import ChannelsLast, Fallback, Shuffle, Upsampled

    torch.manual_seed(0)
    body = {
        "convnext_block": [nn.Conv2d(3, 4, 3, padding=1), ChannelsLast(4)],
        "channel_shuffle": [nn.Conv2d(3, 4, 3, padding=1), Shuffle(4, 2)],
        "upsampling": [
            nn.Conv2d(3, 4, 3, padding=1),
            Upsampled("nearest", (2, 2)),
            nn.Conv2d(4, 4, 3),
        ],
        "fallback": [nn.Conv2d(3, 4, 3, padding=1), Fallback(4, "groupnorm"), nn.ReLU()],
    }[name]
    model = nn.Sequential(*body, *_head(4)).eval()
    text = kql.explain(model, (3, 12, 12), patch=3, stride=3, batch_size=4)
    text = text.split("== physical ==")[0]
    path = GOLDEN / f"layouts_{name}.txt"
    if os.environ.get("KRYPTON_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


class TinyVolumeNet(nn.Module):
    """A 3-D stem with an anisotropic kernel and stride, a residual block, a trilinear
    upsampling back to the stem's grid and a global pool: boxes, pads and windows per axis."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(1, 4, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2))
        self.bn = nn.BatchNorm3d(4)
        self.conv = nn.Conv3d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool3d(2, ceil_mode=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        y = F.relu(self.conv(x) + x)
        y = F.interpolate(self.pool(y), scale_factor=2, mode="trilinear")
        return self.fc(y.mean((2, 3, 4)))


def test_golden_explain_of_a_volume_plan() -> None:
    """A 3-D plan reads per axis (shapes, kernels, strides, pads and boxes as D×H×W) and says
    that its steps run on the torch reference."""
    torch.manual_seed(0)
    text = kql.explain(
        TinyVolumeNet().eval(), (1, 8, 16, 16), patch=(2, 4, 4), stride=(2, 4, 4), batch_size=8
    )
    path = GOLDEN / "volume_plan.txt"
    if os.environ.get("KRYPTON_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
