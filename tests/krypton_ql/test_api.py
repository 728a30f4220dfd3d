"""The public API: targets, scores, progress, batches of images, out-of-memory retries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import krypton_ql as kql
from runtime import reference
from tests import oracle
from tests.helpers import assert_matches_oracle, small_cnn


def test_targets_per_image_and_scores() -> None:
    model, images = small_cnn(), torch.randn(2, 3, 12, 10)
    expected = oracle.run(model, images, 3, 2)
    for target in (None, 3, [1, 2]):
        for score in ("prob", "logit"):
            options = dict(patch=3, stride=2, target=target, score=score)
            exact = kql.occlusion_heatmap(model, images, progress=False, **options)
            assert exact.shape == (2, 6, 5)
            assert_matches_oracle(exact, model, images, expected=expected, **options)
            naive = kql.naive_heatmap(model, images, progress=False, **options)
            assert_matches_oracle(naive, model, images, expected=expected, **options)


def test_heatmap_values_are_the_scores_of_occluded_images() -> None:
    """Cell (i, j) is the target's probability with the patch at (i·Sy, j·Sx)."""
    model, image = small_cnn(), torch.randn(3, 12, 10)
    heatmap = kql.occlusion_heatmap(model, image, patch=(4, 3), stride=(3, 2), color=0.25, target=1)
    occluded = image.clone()
    occluded[:, 6:10, 4:7] = 0.25  # row 2, column 2
    with torch.no_grad():
        expected = torch.softmax(model(occluded[None]), 1)[0, 1]
    assert float(heatmap[2, 2]) == pytest.approx(float(expected), abs=1e-6)


def test_evaluate_reports_base_scores_and_query_count() -> None:
    model, image = small_cnn(), torch.randn(3, 12, 10)
    plan = kql.compile(model, image.shape, patch=3, stride=3)
    result = plan.evaluate(image)
    with torch.no_grad():
        probabilities = torch.softmax(model(image[None]), 1)
    assert int(result.targets[0, 0]) == int(probabilities.argmax())
    assert float(result.base[0, 0]) == pytest.approx(float(probabilities.max()), abs=1e-6)
    assert result.queries == len(plan.positions)
    subset = plan.evaluate(image, positions=torch.tensor([0, 5]))
    assert subset.queries == 2
    flat = subset.heatmaps.reshape(-1)
    assert not torch.isnan(flat[[0, 5]]).any() and torch.isnan(flat[1]).item()


@pytest.mark.parametrize("method", [kql.occlusion_heatmap, kql.naive_heatmap])
def test_progress_callback_sees_every_query(method) -> None:
    seen: list[tuple[int, int]] = []
    method(
        small_cnn(),
        torch.randn(3, 12, 10),
        patch=3,
        stride=2,
        batch_size=7,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(7, 30), (14, 30), (21, 30), (28, 30), (30, 30)]


def test_naive_runs_each_query_once_in_batches() -> None:
    """A look at the output (a map, or class scores?) and one clean forward, then every
    occluded copy exactly once, ``batch_size`` at a time."""
    model, image = small_cnn(), torch.randn(3, 12, 10)
    sizes: list[int] = []
    model[0].register_forward_hook(lambda _m, inputs, _o: sizes.append(len(inputs[0])))
    heatmap = kql.naive_heatmap(model, image, patch=3, stride=2, batch_size=7, progress=False)
    assert sizes == [1, 1, 7, 7, 7, 7, 2]
    assert_matches_oracle(heatmap, model, image, patch=3, stride=2)


@pytest.mark.parametrize("method", [kql.occlusion_heatmap, kql.naive_heatmap])
def test_the_default_stride_is_one(method) -> None:
    model, image = small_cnn(), torch.randn(3, 9, 8)
    heatmap = method(model, image, patch=(3, 2), progress=False)
    assert heatmap.shape == (7, 7)
    assert_matches_oracle(heatmap, model, image, patch=(3, 2), stride=1)


def test_out_of_memory_halves_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = reference.KERNELS[reference.KernelId.GATHER_CONV]

    def flaky(node, inputs, env):
        calls.append(len(env.batch.image))
        if len(env.batch.image) > 8:
            raise torch.OutOfMemoryError("simulated")
        return original(node, inputs, env)

    monkeypatch.setitem(reference.KERNELS, reference.KernelId.GATHER_CONV, flaky)
    model, image = small_cnn(), torch.randn(3, 12, 10)
    exact = kql.occlusion_heatmap(model, image, patch=3, stride=2, batch_size=30, progress=False)
    assert_matches_oracle(exact, model, image, patch=3, stride=2)
    assert calls[:2] == [30, 15] and max(calls[2:]) <= 8  # 30 → 15 → 7


def test_explain_matches_the_plan() -> None:
    text = kql.explain(small_cnn(), (3, 12, 10), patch=3, stride=2, batch_size=4)
    assert text.startswith("== logical ==")
    assert "== rewritten ==" in text and "== physical ==" in text
    assert "batch size 4 → 8 batches" in text


def test_several_targets_in_one_pass() -> None:
    model, images = small_cnn(), torch.randn(2, 3, 12, 10)
    plan = kql.compile(model, images.shape, patch=3, stride=2)
    result = plan.evaluate(images, targets=torch.tensor([[0, 3], [2, 1]]))
    assert result.heatmaps.shape == (2, 2, 6, 5) and result.queries == 60
    for image, classes in enumerate(([0, 3], [2, 1])):
        for index, target in enumerate(classes):
            assert_matches_oracle(
                result.heatmaps[image, index], model, images[image], patch=3, stride=2,
                target=target,
            )  # fmt: skip
    with pytest.raises(kql.KryptonError, match="outside the model's 4 classes"):
        plan.evaluate(images, targets=torch.tensor([[0], [4]]))
    with pytest.raises(kql.KryptonError, match="int tensor"):
        plan.evaluate(images, targets=torch.tensor([0, 1]))


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"stride": 0}, "stride"),
        ({"patch": 100}, "patch"),
        ({"color": (1.0, 2.0)}, "color"),
        ({"score": "odds"}, "score"),
        ({"batch_size": 0}, "batch_size"),
        ({"tau": 1.5}, "tau"),
        ({"backend": "cuda"}, "backend"),
        ({"conv": "fft"}, "conv"),
        ({"linear_strategy": "sometimes"}, "linear_strategy"),
        ({"precision": "fp8"}, "precision"),
        ({"drilldown": 0.5, "drilldown_mode": "spiral"}, "drilldown_mode"),
        ({"speedup": 0.5}, "speedup"),
        ({"speedup": 20, "drilldown": 0.5}, "speedup"),
        ({"profile": object()}, "profile"),
    ],
)
def test_option_errors_name_the_option(options, option) -> None:
    """Every option check says which option it rejects (the query language's caret goes there,
    without reading the message)."""
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(2)).eval()
    model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(kql.InvalidInputError) as raised:
        kql.compile(model, (3, 8, 8), **{"patch": 2, **options})
    assert raised.value.option == option, str(raised.value)


def test_the_option_keywords_are_declared_once() -> None:
    """``PlanKeywords`` (what compile, occlusion_heatmap and naive_heatmap pass on) lists
    exactly ``Options.build``'s keywords after the shape and the patch."""
    import inspect

    from krypton_ql.options import Options, PlanKeywords

    built = set(inspect.signature(Options.build).parameters) - {"input_shape", "patch"}
    assert set(PlanKeywords.__annotations__) == built
    for function in (kql.compile, kql.occlusion_heatmap, kql.naive_heatmap):
        parameters = inspect.signature(function).parameters
        assert "patch" in parameters and not built & set(parameters), function.__name__
    with pytest.raises(kql.KryptonError, match="tau is an option of the incremental plan"):
        kql.naive_heatmap(small_cnn(), torch.randn(3, 8, 8), patch=2, tau=0.5)
