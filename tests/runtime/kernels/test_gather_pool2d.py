"""The fused gather-pooling kernel against ``gather`` + torch pooling, on odd shapes, windows
across the border, both divisor rules and an epilogue."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.types import Size2
from runtime.kernels import gather_pool2d as kernels
from runtime.kernels.epilogue import Epilogue
from runtime.values import Patch, gather
from tests.helpers import KERNEL_DEVICE
from tests.profiles import examples


@settings(max_examples=examples(12))
@given(
    channels=st.integers(1, 10),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    size=st.tuples(st.integers(4, 8), st.integers(4, 8)),
    out=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    mode=st.sampled_from(["max", "avg", "avg_map"]),
    relu=st.booleans(),
    seed=st.integers(0, 999),
    data=st.data(),
)
def test_matches_gather_then_pool(
    channels, kernel, stride, dilation, size, out, mode, relu, seed, data
) -> None:
    torch.manual_seed(seed)
    height, width = size
    queries = data.draw(st.integers(1, 3))
    view = torch.randn(2, channels, height, width).contiguous(memory_format=torch.channels_last)
    patch = torch.randn(queries, channels, 2, 3)
    py = torch.tensor([data.draw(st.integers(0, height - 2)) for _ in range(queries)])
    px = torch.tensor([data.draw(st.integers(0, width - 3)) for _ in range(queries)])
    ry = py + torch.tensor([data.draw(st.integers(-2, 1)) for _ in range(queries)])
    rx = px + torch.tensor([data.draw(st.integers(-2, 1)) for _ in range(queries)])
    image = torch.randint(0, 2, (queries,))
    window = Size2(
        dilation * (kernel[0] - 1) + 1 + (out[0] - 1) * stride,
        dilation * (kernel[1] - 1) + 1 + (out[1] - 1) * stride,
    )
    fill = float("-inf") if mode == "max" else 0.0
    gathered = gather(
        view, Patch(patch, py, px), image, (ry, rx), window, Size2(height, width), fill
    )
    if mode == "max":
        expected = F.max_pool2d(gathered, kernel, stride, 0, dilation)
        divisor: float | tuple = 1.0
    else:
        sums = F.conv2d(
            gathered.reshape(-1, 1, *gathered.shape[2:]),
            torch.ones(1, 1, *kernel),
            stride=stride,
            dilation=dilation,
        ).reshape(queries, channels, *out)
        if mode == "avg":
            divisor, expected = 4.0, sums / 4.0
        else:
            counts = torch.randint(1, 9, (out[0] + 3, out[1] + 2)).float()
            oy = torch.tensor([data.draw(st.integers(0, 3)) for _ in range(queries)])
            ox = torch.tensor([data.draw(st.integers(0, 2)) for _ in range(queries)])
            rows = (oy[:, None] + torch.arange(out[0]))[:, :, None]
            cols = (ox[:, None] + torch.arange(out[1]))[:, None, :]
            divisor, expected = (counts, oy, ox), sums / counts[rows, cols][:, None]
    epilogue = Epilogue(act=1) if relu else Epilogue()
    expected = expected.relu() if relu else expected
    on = lambda t: t.to(KERNEL_DEVICE)  # noqa: E731
    if isinstance(divisor, tuple):
        divisor = tuple(on(t) for t in divisor)
    got = kernels.gather_pool2d(
        on(view),
        on(patch),
        on(image),
        on(ry),
        on(rx),
        on(py),
        on(px),
        kernel,
        (stride, stride),
        (dilation, dilation),
        out,
        is_max=mode == "max",
        divisor=divisor,
        epilogue=epilogue,
    )
    assert torch.allclose(got.cpu(), expected, atol=1e-5, rtol=1e-5)
