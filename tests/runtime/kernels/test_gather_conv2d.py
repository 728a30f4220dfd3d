"""The fused gather-convolution kernel against ``gather`` + ``F.conv2d`` on odd shapes and
windows that cross the border."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.types import Size2
from runtime.kernels import gather_conv2d as kernels
from runtime.values import Patch, gather
from tests.helpers import KERNEL_DEVICE
from tests.profiles import examples


@settings(max_examples=examples(16))
@given(
    channels=st.sampled_from([1, 2, 3, 4, 18]),
    # one input channel per group (or channels=1) runs as a weighted sum pool, not a GEMM
    depthwise=st.booleans(),
    multiplier=st.integers(1, 2),
    # above the interpreter's 16-wide tile, the output channels span several program ids
    c_out=st.sampled_from([1, 2, 3, 5, 17, 18]),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    height=st.integers(4, 9),
    width=st.integers(4, 9),
    out=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    bias=st.booleans(),
    seed=st.integers(0, 999),
    data=st.data(),
)
def test_matches_gather_then_conv(
    channels, depthwise, multiplier, c_out, kernel, stride, dilation, height, width, out, bias,
    seed, data,
) -> None:  # fmt: skip
    torch.manual_seed(seed)
    groups = channels if depthwise else 1
    c_out = channels * multiplier if depthwise else c_out
    queries = data.draw(st.integers(1, 3))
    view = torch.randn(2, channels, height, width).contiguous(memory_format=torch.channels_last)
    ph, pw = min(3, height), min(2, width)
    patch = torch.randn(queries, channels, ph, pw)
    py = torch.tensor([data.draw(st.integers(0, height - ph)) for _ in range(queries)])
    px = torch.tensor([data.draw(st.integers(0, width - pw)) for _ in range(queries)])
    ry = py + torch.tensor([data.draw(st.integers(-3, 1)) for _ in range(queries)])
    rx = px + torch.tensor([data.draw(st.integers(-3, 1)) for _ in range(queries)])
    image = torch.randint(0, 2, (queries,))
    weight = torch.randn(c_out, channels // groups, *kernel)
    b = torch.randn(c_out) if bias else None
    window = Size2(
        dilation * (kernel[0] - 1) + 1 + (out[0] - 1) * stride,
        dilation * (kernel[1] - 1) + 1 + (out[1] - 1) * stride,
    )
    gathered = gather(view, Patch(patch, py, px), image, (ry, rx), window, Size2(height, width))
    expected = F.conv2d(gathered, weight, b, stride, 0, dilation, groups)
    on = lambda t: None if t is None else t.to(KERNEL_DEVICE)  # noqa: E731
    arguments = [on(t) for t in (view, patch, image, ry, rx, py, px, weight, b)]
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # exact fp32 on a GPU
        got = kernels.gather_conv2d(*arguments, (stride, stride), (dilation, dilation), groups, out)
    assert got.shape == expected.shape
    assert torch.allclose(got.cpu(), expected, atol=1e-5, rtol=1e-5)


def test_output_channels_span_several_tiles_in_each_group() -> None:
    """Two groups of 18 output channels (the interpreter's tile is 16 wide), 20 input channels
    per group (K = 180 spans several reduction tiles), a bias and windows across the border."""
    torch.manual_seed(0)
    view = torch.randn(2, 40, 7, 6).contiguous(memory_format=torch.channels_last)
    patch = torch.randn(3, 40, 3, 2)
    py, px = torch.tensor([0, 4, 2]), torch.tensor([4, 0, 1])
    ry, rx = py - torch.tensor([1, 2, 0]), px - torch.tensor([1, 0, 2])
    image = torch.tensor([0, 1, 1])
    weight, bias = torch.randn(36, 20, 3, 3), torch.randn(36)
    gathered = gather(view, Patch(patch, py, px), image, (ry, rx), Size2(5, 4), Size2(7, 6))
    expected = F.conv2d(gathered, weight, bias, 1, 0, 1, 2)
    on = lambda t: t.to(KERNEL_DEVICE)  # noqa: E731
    arguments = [on(t) for t in (view, patch, image, ry, rx, py, px, weight, bias)]
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        got = kernels.gather_conv2d(*arguments, (1, 1), (1, 1), 2, (3, 2))
    assert torch.allclose(got.cpu(), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.gpu
def test_compiled_on_the_gpu_matches() -> None:
    torch.manual_seed(0)
    view = torch.randn(1, 64, 56, 56, device="cuda")
    patch = torch.randn(256, 64, 12, 12, device="cuda")
    py = torch.randint(0, 44, (256,), device="cuda")
    px = torch.randint(0, 44, (256,), device="cuda")
    weight = torch.randn(64, 64, 3, 3, device="cuda")
    image = torch.zeros(256, dtype=torch.int64, device="cuda")
    gathered = gather(
        view, Patch(patch, py, px), image, (py - 2, px - 2), Size2(16, 16), Size2(56, 56)
    )
    expected = F.conv2d(gathered, weight, None)
    got = kernels.gather_conv2d(
        view, patch, image, py - 2, px - 2, py, px, weight, None, (1, 1), (1, 1), 1, (14, 14)
    )
    assert torch.allclose(got, expected, atol=1e-2, rtol=1e-2)  # both TF32 (torch default)
