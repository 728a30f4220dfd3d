"""Folded epilogues equal the element-wise nodes applied one by one on the reference."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compiler.ir import Activation, Arith, BatchNorm, Map, Node, Scalar, WeightRef
from compiler.types import Schema
from runtime import full as full_ops
from runtime.kernels import elementwise as kernels
from runtime.kernels.epilogue import Epilogue, fold  # noqa: E402
from runtime.weights import Weights
from tests.helpers import KERNEL_DEVICE
from tests.profiles import examples

CHANNELS = 5


def _bn_module() -> nn.Module:
    holder = nn.Module()
    bn = nn.BatchNorm2d(CHANNELS)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(-2, 2)
    bn.bias.data.uniform_(-1, 1)
    holder.bn = bn
    return holder


def _bn() -> BatchNorm:
    ref = lambda name: WeightRef(f"bn.{name}", (CHANNELS,))  # noqa: E731
    return BatchNorm(ref("running_mean"), ref("running_var"), ref("weight"), ref("bias"), 1e-5)


OPS = st.one_of(
    st.just("bn"),
    st.builds(Scalar, st.sampled_from(list(Arith)), st.sampled_from([0.5, -2.0, 3.0])),
    st.builds(Map, st.sampled_from(list(Activation)), st.just(0.1), st.just(0.7)),
)


@settings(max_examples=examples(40))
@given(chain=st.lists(OPS, min_size=1, max_size=5), seed=st.integers(0, 99))
def test_folded_segments_equal_the_nodes(chain, seed) -> None:
    torch.manual_seed(seed)
    weights = Weights(_bn_module())
    nodes = tuple(
        Node(f"n{i}", _bn() if op == "bn" else op, (), Schema((CHANNELS, 3, 4)))
        for i, op in enumerate(chain)
    )
    x = (8 * torch.randn(2, CHANNELS, 3, 4)).contiguous(memory_format=torch.channels_last)
    expected = x
    for node in nodes:
        expected = full_ops.elementwise(node.op, expected, weights)
    got = x.to(KERNEL_DEVICE)
    module = _bn_module().to(KERNEL_DEVICE) if KERNEL_DEVICE != "cpu" else None
    on_device = Weights(module) if module is not None else weights
    if module is not None:
        module.load_state_dict(weights._module.state_dict())
    for segment in fold(nodes, on_device, CHANNELS, got.device):
        if isinstance(segment, Epilogue):
            got = kernels.elementwise(got, segment)
        else:
            got = full_ops.elementwise(segment.op, got, on_device)
    assert torch.allclose(got.cpu(), expected, atol=1e-5, rtol=1e-4, equal_nan=True)


def test_batch_norm_then_relu_is_one_segment() -> None:
    nodes = (
        Node("bn", _bn(), (), Schema((CHANNELS, 1, 1))),
        Node("relu", Map(Activation.RELU), (), Schema((CHANNELS, 1, 1))),
        Node("gelu", Map(Activation.GELU), (), Schema((CHANNELS, 1, 1))),
    )
    segments = fold(nodes, Weights(_bn_module()), CHANNELS, torch.device("cpu"))
    assert len(segments) == 2 and isinstance(segments[0], Epilogue)
    assert segments[0].act == 1 and segments[0].scale is not None
    assert segments[1] is nodes[2]  # no Triton gelu: the reference runs it
