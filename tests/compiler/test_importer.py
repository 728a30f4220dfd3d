"""Exported ATen graph -> IR translation: each supported form lands on the right operator; a
form no translator places in space becomes the exact fallback, and the few that cannot be
explained at all are refused by name."""

from __future__ import annotations

import contextlib
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import krypton_ql as kql
from compiler import ir
from compiler.importer import export, import_model
from compiler.types import Padding, Size2
from tests.helpers import assert_matches_oracle


def _ops(module: nn.Module, shape=(3, 14, 14)) -> list:
    module.eval()
    with contextlib.suppress(Exception):  # the import reports what is wrong
        module(torch.zeros(1, *shape))  # initializes lazy layers
    plan = import_model(export(module, shape), shape, Size2(2, 2), (0.0,) * shape[0])
    return [node.op for node in plan][2:]  # after Input and Occlude


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn, self.fc = fn, nn.LazyLinear(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.fn(x), 1))


def test_same_padding_with_an_even_kernel_is_asymmetric() -> None:
    warnings.filterwarnings("ignore", "Using padding='same'")
    model = Lambda(nn.Conv2d(3, 3, 4, padding="same"))
    (conv, *_rest) = _ops(model)
    assert isinstance(conv, ir.JoinAggregate)
    assert conv.window.padding == Padding.sides(1, 2, 1, 2)
    image = torch.randn(3, 14, 14)
    exact = kql.occlusion_heatmap(model, image, patch=3, stride=2, score="logit", progress=False)
    assert_matches_oracle(exact, model, image, patch=3, stride=2, score="logit")


def test_functional_conv_reads_weights_by_handle() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 1, 3, 3))
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.conv2d(F.pad(x, (1, 1, 0, 2)), self.weight, None, 2, 0, 1, 3)
            return self.fc(y.mean((2, 3)))

    pad, conv, pool, fc = _ops(Functional())
    assert isinstance(pad, ir.Pad) and pad.padding == Padding.sides(0, 2, 1, 1)
    assert conv.weight.path == "weight" and conv.groups == 3 and conv.bias is None
    assert isinstance(pool, ir.GlobalAvgPool) and not pool.keepdim
    assert isinstance(fc, ir.Linear)


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (lambda x: x * 0.5, ir.Scalar(ir.Arith.MUL, 0.5)),
        (lambda x: 2.0 - x, ir.Scalar(ir.Arith.RSUB, 2.0)),
        (lambda x: x / 4, ir.Scalar(ir.Arith.DIV, 4.0)),
        (lambda x: F.leaky_relu(x, 0.3), ir.Map(ir.Activation.LEAKY_RELU, 0.3)),
        (lambda x: F.hardtanh(x, -2.0, 3.0), ir.Map(ir.Activation.HARDTANH, -2.0, 3.0)),
        (lambda x: x.sigmoid(), ir.Map(ir.Activation.SIGMOID)),
        (lambda x: F.relu6(x), ir.Map(ir.Activation.RELU6)),
        (lambda x: F.dropout(x, 0.5, False), ir.Flatten()),  # the identity: no node
    ],
    ids=["mul", "rsub", "div", "leaky", "hardtanh", "sigmoid", "relu6", "dropout"],
)
def test_elementwise_forms(fn, expected) -> None:
    assert _ops(Lambda(fn))[0] == expected


@pytest.mark.parametrize(
    ("fn", "arith"),
    [
        (lambda x: x - torch.sigmoid(x), ir.Arith.SUB),
        (lambda x: x * torch.sigmoid(x), ir.Arith.MUL),
        (lambda x: x / (torch.sigmoid(x) + 0.5), ir.Arith.DIV),
    ],
    ids=["sub", "mul", "div"],
)
def test_arithmetic_of_two_tensors_is_a_combine(fn, arith) -> None:
    assert ir.Combine(arith) in _ops(Lambda(fn))


def test_adaptive_pooling_is_local_when_windows_are_uniform() -> None:
    local = _ops(Lambda(nn.AdaptiveAvgPool2d(7)))[0]
    assert isinstance(local, ir.Pool) and local.window.kernel == Size2(2, 2)
    general = _ops(Lambda(nn.AdaptiveAvgPool2d(5)))[0]
    assert isinstance(general, ir.AdaptivePool) and general.output == Size2(5, 5)


def test_view_to_one_row_is_a_flatten_of_each_image() -> None:
    """``x.view(1, -1)`` at the exported batch of one is each image's flatten (occlusion
    scores each image alone)."""
    flatten, linear = _ops(Lambda(lambda x: x.view(1, -1)))
    assert isinstance(flatten, ir.Flatten) and isinstance(linear, ir.Linear)


def test_view_by_batch_size_is_a_flatten() -> None:
    class Viewed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3 * 14 * 14, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.softmax(self.fc(x.view(x.size(0), -1)), dim=1)

    flatten, linear, softmax = _ops(Viewed())
    assert isinstance(flatten, ir.Flatten) and isinstance(softmax, ir.Softmax)


@pytest.mark.parametrize(
    ("fn", "why"),
    [
        (lambda x: x.permute(0, 2, 1, 3).reshape(len(x), 14, -1), "merges the spatial axes"),
        (lambda x: torch.cat([x, x], dim=2), "along a spatial axis"),
        (lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect"), "reflect padding"),
        (lambda x: F.max_pool2d(x, 2, return_indices=True)[1].float(), "indices"),
        (lambda x: x * x.mean((1, 2, 3), keepdim=True), "the spatial and the channel axes"),
        (lambda x: F.group_norm(x, 1), "statistics over the whole map"),
    ],
    ids=["view-batch-1", "cat-spatial", "reflect", "indices", "global-mean", "group-norm"],
)
def test_forms_that_are_not_local_run_as_the_exact_fallback(fn, why: str) -> None:
    """Each becomes an ``Aten`` node that says why, and the heatmap is still exact."""
    model = Lambda(fn).eval()
    ops = _ops(model)
    fallbacks = [op for op in ops if isinstance(op, ir.Aten)]
    assert fallbacks and re.search(why, fallbacks[0].why), [op.why for op in fallbacks]
    image = torch.randn(3, 14, 14)
    options = dict(patch=3, stride=3, score="logit")
    heatmap = kql.occlusion_heatmap(model, image, progress=False, **options)
    assert_matches_oracle(heatmap, model, image, **options)


def test_random_dropout_is_refused_by_name() -> None:
    with pytest.raises(kql.UnsupportedOperationError, match="dropout with training=True"):
        _ops(Lambda(lambda x: F.dropout(x, 0.5, True)))


def test_two_inputs_are_refused() -> None:
    class TwoInputs(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return (x + y).flatten(1)

    with pytest.raises(kql.KryptonError, match="more than one input|does not accept"):
        import_model(export(TwoInputs().eval(), (3, 4, 4)), (3, 4, 4), Size2(1, 1), (0.0,) * 3)


def test_logical_plan_runs_like_the_model() -> None:
    """Materializing the logical plan reproduces the model's own output."""
    from compiler.boxes import Positions
    from compiler.lower import lower
    from compiler.options import CompileOptions
    from compiler.pipeline import optimize
    from runtime.executor import materialize
    from runtime.weights import Weights

    model = Lambda(lambda x: F.silu(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)))
    model.eval()
    exported = export(model, (3, 14, 14))
    plan = import_model(exported, (3, 14, 14), Size2(2, 2), (0.0,) * 3)
    options = CompileOptions(Size2(2, 2), Size2(1, 1), (0.0,) * 3, batch_size=4)
    physical = lower(optimize(plan, options, Positions.centre(Size2(14, 14), Size2(2, 2))).plan)
    image = torch.randn(2, 3, 14, 14)
    views = materialize(physical, image, Weights(exported.tensors))
    with torch.no_grad():
        assert torch.allclose(views[physical.output], model(image), atol=1e-6)


def test_a_tensor_added_to_class_scores_keeps_their_rank() -> None:
    """A learned offset ``[K]`` added to the logits is a ``[K]`` constant, not a feature map
    (aligning it to rank 4 turned the scores into ``[N, 1, 1, K]``)."""

    class Offset(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.offset = nn.Parameter(torch.randn(4))
            self.scale = nn.Parameter(torch.rand(3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc((x * self.scale).mean((2, 3))) + self.offset

    model = Offset().eval()
    ops = import_model(export(model, (3, 6, 6)), (3, 6, 6), Size2(2, 2), (0.0,) * 3)
    constants = {node.name: node.schema.shape for node in ops if isinstance(node.op, ir.Constant)}
    assert constants == {"scale": (3, 1, 1), "offset": (4,)}
    image = torch.randn(3, 6, 6)
    options = dict(patch=2, stride=2, score="logit")
    heatmap = kql.occlusion_heatmap(model, image, progress=False, **options)
    assert_matches_oracle(heatmap, model, image, **options)


class InPlace(nn.Module):
    """Writes in place to a tensor that is read again; the model's own semantics count."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.kind == "relu":  # y itself becomes relu(y): y + z = 2·relu(y)
            z = self.relu(y)
            out = y + z
        elif self.kind == "add_":
            y.add_(1.0)
            out = y * y
        elif self.kind == "alias":  # z is y: the write reaches y
            z = y
            z += 1.0
            out = y * 2.0 - z.sigmoid()
        else:  # a write through a view of y reaches y
            v = y[:, :2]
            v.mul_(3.0)
            out = y
        return self.fc(out.mean((2, 3)))


@pytest.mark.parametrize("kind", ["relu", "add_", "alias", "view"])
def test_in_place_writes_have_their_true_semantics(kind: str) -> None:
    """Heatmap and clean score equal the model's own (fx tracing read the values before the
    write, silently)."""
    torch.manual_seed(0)
    model = InPlace(kind).eval()
    image = torch.randn(3, 10, 10)
    options = dict(patch=3, stride=2, score="logit")
    plan = kql.compile(model, image.shape, **options)
    result = plan.evaluate(image, progress=False)
    with torch.no_grad():
        clean = model(image[None].clone())
    assert torch.allclose(result.base[0], clean[0, result.targets[0]], atol=1e-5)
    assert_matches_oracle(result.heatmaps[0, 0], model, image, **options)


def test_a_channels_last_constant_that_varies_over_space_is_moved_into_place() -> None:
    """A learned ``[H, W, C]`` map added to a channels-last tensor is a ``[C, H, W]`` constant
    in the IR (its cells must land where the model adds them)."""

    class Positional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.position = nn.Parameter(torch.randn(9, 8, 4))
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = (self.conv(x).permute(0, 2, 3, 1) + self.position).relu()
            return self.fc(y.permute(0, 3, 1, 2).amax((2, 3)))

    torch.manual_seed(0)
    model = Positional().eval()
    ops = _ops(model, (3, 9, 8))
    assert any(isinstance(op, ir.Constant) and op.ref.path.endswith("as C×H×W>") for op in ops)
    image = torch.randn(3, 9, 8)
    options = dict(patch=3, stride=2, score="logit")
    heatmap = kql.occlusion_heatmap(model, image, progress=False, **options)
    assert_matches_oracle(heatmap, model, image, **options)
