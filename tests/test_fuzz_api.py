"""The public API under random arguments — types, ranges, shapes, devices, dtypes, valid and
not: every call returns the heatmap naive re-inference returns, or raises a ``KryptonError``.
Nothing else escapes."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

import krypton_ql as kql
from compiler.errors import KryptonError
from tests.profiles import examples


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip


MODEL = _model()
ANYTHING = st.one_of(
    st.none(), st.booleans(), st.text(max_size=3), st.just(float("nan")), st.just(-1),
    st.just(10**30), st.just([]), st.just({}), st.just(object()),
)  # fmt: skip
SIZES = st.one_of(
    st.integers(-2, 10), st.tuples(st.integers(0, 9), st.integers(0, 9)),
    st.floats(-2, 10), st.lists(st.integers(1, 4), max_size=3), ANYTHING,
)  # fmt: skip
COLOURS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.just(1e39),
    st.lists(st.floats(-2, 2), min_size=1, max_size=4), ANYTHING,
)  # fmt: skip
TARGETS = st.one_of(
    st.none(), st.integers(-2, 5), st.lists(st.integers(-1, 3), max_size=3),
    st.builds(torch.tensor, st.lists(st.integers(0, 3), min_size=1, max_size=2)), ANYTHING,
)  # fmt: skip


@st.composite
def images(draw) -> object:
    kind = draw(st.sampled_from(["good"] * 6 + ["shape", "dtype", "nan", "meta", "junk"]))
    if kind == "junk":
        return draw(ANYTHING)
    shape = (
        (3, 8, 8)
        if kind != "shape"
        else draw(st.sampled_from([(8, 8), (1, 8, 8), (2, 3, 4, 4, 1), (0, 3, 8, 8), (4, 8, 8)]))
    )  # noqa: E501
    image = torch.rand(shape)
    if kind == "dtype":
        image = image.to(draw(st.sampled_from([torch.float64, torch.float16, torch.int64])))
    if kind == "nan":
        image[..., 0, 0] = float("nan")
    if kind == "meta":
        image = image.to("meta")
    if kind == "good" and draw(st.booleans()):
        image = image[None].expand(2, -1, -1, -1).clone()
    return image


VALID = {
    "patch": st.integers(1, 4),
    "stride": st.integers(1, 4),
    "color": st.floats(-2, 2),
    "target": st.one_of(st.none(), st.integers(0, 2)),
    "score": st.sampled_from(["prob", "logit"]),
    "batch_size": st.one_of(st.none(), st.integers(1, 40)),
}
WRONG = {
    "patch": SIZES,
    "stride": SIZES,
    "color": COLOURS,
    "target": TARGETS,
    "score": st.one_of(st.sampled_from(["probability"]), ANYTHING),
    "batch_size": st.one_of(st.integers(-1, 0), ANYTHING),
    "backend": st.one_of(st.sampled_from(["auto", "torch", "cuda"]), ANYTHING),
    "precision": st.one_of(st.sampled_from(["fp32", "fp64", "int8"]), ANYTHING),
    "tau": st.one_of(st.floats(-1, 2), ANYTHING),
    "speedup": st.one_of(st.floats(-1, 10), ANYTHING),
}


@st.composite
def options(draw) -> dict:
    """Mostly valid options (so that many calls run and are compared with naive), each with a
    chance of a few fields drawn from anything."""
    chosen = {"patch": draw(VALID["patch"])}
    for name in draw(st.sets(st.sampled_from(sorted(VALID)), max_size=4)):
        chosen[name] = draw(VALID[name])
    for name in draw(st.sets(st.sampled_from(sorted(WRONG)), max_size=2)):
        chosen[name] = draw(WRONG[name])
    return chosen


OPTIONS = options()
EXACT = {"patch", "stride", "color", "target", "score", "batch_size"}  # what naive also takes


@settings(
    max_examples=examples(120),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(image=images(), options=OPTIONS)
@example(image=torch.rand(3, 8, 8), options={"patch": 1, "precision": []})  # was a TypeError
def test_every_call_equals_naive_or_raises_a_krypton_error(image, options) -> None:
    try:
        got = kql.occlusion_heatmap(MODEL, image, progress=False, **options)
    except KryptonError:
        return
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    if set(options) <= EXACT | {"backend", "precision"} and options.get("precision") is None:
        naive = {k: v for k, v in options.items() if k in EXACT}
        expected = kql.naive_heatmap(MODEL, image, progress=False, **naive)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5), (options, (got - expected).abs().max())
    else:  # an approximation: a heatmap of the grid's shape, finite where computed
        assert got.dim() in (2, 3) and not math.isinf(float(got.nan_to_num(0).abs().max()))


@settings(max_examples=examples(60))
@given(image=images(), options=OPTIONS)
def test_the_oracle_raises_only_krypton_errors(image, options) -> None:
    naive = {k: v for k, v in options.items() if k in EXACT}
    try:
        got = kql.naive_heatmap(MODEL, image, progress=False, **naive)
    except KryptonError:
        return
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.dim() in (2, 3)
