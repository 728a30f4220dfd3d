"""The vectorized gather against a per-query loop that builds ``view ⊕ patch`` explicitly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from compiler.types import Size2
from runtime import values
from runtime.values import Patch, gather


def _loop_reference(view, patch, image, y0, x0, size, fill):
    """Paste each query's patch into a copy of its view, pad, and slice the window."""
    margin = max(size.h, size.w) + 8
    windows = []
    for b in range(len(y0)):
        full = view[image[b]].clone()
        if patch is not None:
            h, w = patch.values.shape[2:]
            py, px = int(patch.y0[b]), int(patch.x0[b])
            full[:, py : py + h, px : px + w] = patch.values[b]
        padded = F.pad(full, (margin,) * 4, value=fill)
        top, left = int(y0[b]) + margin, int(x0[b]) + margin
        windows.append(padded[:, top : top + size.h, left : left + size.w])
    return torch.stack(windows)


@given(
    channels=st.integers(1, 4),
    height=st.integers(3, 12),
    width=st.integers(3, 12),
    window=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    box=st.integers(1, 3),
    fill=st.sampled_from([0.0, float("-inf")]),
    seed=st.integers(0, 999),
    sliced=st.booleans(),
    data=st.data(),
)
def test_gather_equals_the_loop(
    channels, height, width, window, box, fill, seed, sliced, data
) -> None:
    """Both CPU paths: advanced indexing, and each query's slice copied (wide maps)."""
    threshold = values.SLICED_CHANNELS
    values.SLICED_CHANNELS = 1 if sliced else 1 << 30
    try:
        _check_gather(channels, height, width, window, box, fill, seed, data)
    finally:
        values.SLICED_CHANNELS = threshold


def _check_gather(channels, height, width, window, box, fill, seed, data) -> None:
    torch.manual_seed(seed)
    queries = data.draw(st.integers(1, 5))
    view = torch.randn(2, channels, height, width).contiguous(memory_format=torch.channels_last)
    box_h, box_w = min(box, height), min(box, width)
    py = torch.tensor(
        data.draw(st.lists(st.integers(0, height - box_h), min_size=queries, max_size=queries))
    )
    px = torch.tensor(
        data.draw(st.lists(st.integers(0, width - box_w), min_size=queries, max_size=queries))
    )
    patch = Patch(torch.randn(queries, channels, box_h, box_w), py, px)
    size = Size2(*window)
    y0 = py + torch.tensor(
        data.draw(st.lists(st.integers(-4, 2), min_size=queries, max_size=queries))
    )
    x0 = px + torch.tensor(
        data.draw(st.lists(st.integers(-4, 2), min_size=queries, max_size=queries))
    )
    image = torch.randint(0, 2, (queries,))
    for source in (patch, None):
        got = gather(view, source, image, (y0, x0), size, Size2(height, width), fill)
        expected = _loop_reference(view, source, image, y0, x0, size, fill)
        assert torch.equal(got, expected)
    delta = gather(None, patch, image, (y0, x0), size, Size2(height, width), 0.0)
    expected = _loop_reference(torch.zeros_like(view), patch, image, y0, x0, size, 0.0)
    assert torch.equal(delta, expected)
