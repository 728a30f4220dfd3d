"""The gather-combine kernel against ``gather`` and torch arithmetic: patched and clean
operands, a broadcast view, every operator, a channel slice of a larger output."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.ir import Arith
from compiler.types import Size2
from runtime.full import ARITH
from runtime.kernels import gather_combine as kernels
from runtime.kernels.epilogue import Epilogue
from runtime.values import Patch, gather
from tests.helpers import KERNEL_DEVICE
from tests.profiles import examples


def _operand(data, queries: int, channels: int, size: Size2, patched: bool, broadcast: bool):
    if broadcast:
        view = torch.randn(2, channels, 1, 1).expand(-1, -1, size.h, size.w)
    else:
        view = torch.randn(2, channels, size.h, size.w)
    if not patched:
        return (view, None, None, None), None
    values = torch.randn(queries, channels, 2, 2)
    y0 = torch.tensor([data.draw(st.integers(0, size.h - 2)) for _ in range(queries)])
    x0 = torch.tensor([data.draw(st.integers(0, size.w - 2)) for _ in range(queries)])
    return (view, values, y0, x0), Patch(values, y0, x0)


@settings(max_examples=examples(15))
@given(
    arith=st.sampled_from([None, *Arith]),
    channels=st.integers(1, 12),
    patched=st.tuples(st.booleans(), st.booleans()),
    broadcast=st.booleans(),
    seed=st.integers(0, 999),
    data=st.data(),
)
def test_matches_gather_then_combine(arith, channels, patched, broadcast, seed, data) -> None:
    torch.manual_seed(seed)
    size, queries, box = Size2(6, 7), data.draw(st.integers(1, 3)), (3, 2)
    first, patch_a = _operand(data, queries, channels, size, patched[0] or arith is None, False)
    second, patch_b = _operand(data, queries, channels, size, patched[1], broadcast)
    image = torch.randint(0, 2, (queries,))
    y0 = torch.tensor([data.draw(st.integers(0, size.h - box[0])) for _ in range(queries)])
    x0 = torch.tensor([data.draw(st.integers(0, size.w - box[1])) for _ in range(queries)])
    a = gather(first[0], patch_a, image, (y0, x0), Size2(*box), size)
    expected = a
    operands = [first]
    if arith is not None:
        b = gather(second[0].contiguous(), patch_b, image, (y0, x0), Size2(*box), size)
        if arith in (Arith.DIV, Arith.RDIV):  # keep divisors away from zero
            a, b = a.abs() + 1, b.abs() + 1
            first = (first[0].abs() + 1, *first[1:])
            first = (first[0], None if first[1] is None else first[1].abs() + 1, *first[2:])
            second = (second[0].abs() + 1, *second[1:])
            second = (second[0], None if second[1] is None else second[1].abs() + 1, *second[2:])
        expected = ARITH[arith](a, b)
        operands = [first, second]
    scale = 8 * torch.randn(channels + 3)
    epilogue = Epilogue(scale=scale, act=2)  # relu6(x·scale)
    on = lambda t: None if t is None else t.to(KERNEL_DEVICE)  # noqa: E731
    out = torch.full((queries, channels + 3, *box), 7.0, device=KERNEL_DEVICE)
    epilogue = Epilogue(scale=on(scale), act=2)
    kernels.gather_combine(
        [tuple(on(t) for t in operand) for operand in operands], on(image), on(y0), on(x0),
        box, arith, epilogue=epilogue.slice(1, 1 + channels), out=out[:, 1 : 1 + channels],
    )  # fmt: skip
    out = out.cpu()
    expected = (expected * scale[1 : 1 + channels, None, None]).clamp(0, 6)
    assert torch.allclose(out[:, 1 : 1 + channels], expected, atol=1e-5, rtol=1e-5)
    assert bool((out[:, 0] == 7).all()) and bool((out[:, 1 + channels :] == 7).all())
