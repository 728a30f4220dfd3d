"""Bad input gets a clear KryptonError, never a deep traceback or a wrong heatmap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import krypton_ql as kql
from tests.helpers import assert_matches_oracle


class Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(self.conv(x), scale_factor=2.0, mode="bicubic")
        return self.fc(x.mean((2, 3)))


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()


IMAGE = torch.randn(3, 12, 12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(patch=13), "larger than the 12×12 image"),
        (dict(patch=0), "patch must be at least 1"),
        (dict(patch=4, stride=0), "stride must be at least 1"),
        (dict(patch=4, stride=1.5), "stride must be an int"),
        (
            dict(patch=(4, 4, 4)),
            r"patch \(4, 4, 4\) gives 3 spatial axes, so the input must have 4",
        ),
        (dict(patch=(4, 4, 4, 4)), "patch must be an int or one int per spatial axis"),
        (dict(patch=4, stride=(2, 2, 2)), "gives 3 spatial axes"),
        (dict(patch=4, color=(0.0, 1.0)), "color has 2 values but the image has 3"),
        (dict(patch=4, color=float("nan")), "color must be finite"),
        (dict(patch=4, score="probability"), "score must be 'prob' or 'logit'"),
        (dict(patch=4, target=7), "outside the model's 2 classes"),
        (dict(patch=4, batch_size=0), "batch_size must be a positive int"),
    ],
)
@pytest.mark.parametrize("heatmap", [kql.occlusion_heatmap, kql.naive_heatmap])
def test_bad_options(heatmap, kwargs: dict, message: str) -> None:
    with pytest.raises(kql.KryptonError, match=message):
        heatmap(_model(), IMAGE, **kwargs)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.randn(12, 12), r"reads it as a signal \[C, L\].*spatial_dims=2"),  # rank 2
        (torch.randn(1, 1, 3, 12, 12), "larger than the 3×12×12 volume"),  # rank 5: volumes
        (torch.randn(1, 1, 1, 3, 12, 12), "rank 6"),
        (torch.full((3, 12, 12), float("nan")), "NaN"),
        (torch.ones(3, 12, 12, dtype=torch.int64), "floating-point"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_images(image, message: str) -> None:
    with pytest.raises(kql.KryptonError, match=message):
        kql.occlusion_heatmap(_model(), image, patch=4)


def test_training_mode_is_refused() -> None:
    with pytest.raises(kql.KryptonError, match="training mode"):
        kql.occlusion_heatmap(_model().train(), IMAGE, patch=4)
    with pytest.raises(kql.KryptonError, match="training mode"):
        kql.naive_heatmap(_model().train(), IMAGE, patch=4)


def test_an_operator_without_a_translation_is_named_in_explain() -> None:
    """It runs as the exact fallback on full tensors, and explain says where and why."""
    text = kql.explain(Unsupported().eval(), (3, 12, 12), patch=4)
    assert "{full from here: aten.upsample_bicubic2d — bicubic upsampling has no box" in text


def test_wrong_channel_count_is_reported() -> None:
    with pytest.raises(kql.KryptonError, match="does not accept inputs of shape"):
        kql.occlusion_heatmap(_model(), torch.randn(1, 12, 12), patch=4)


def test_plan_rejects_images_of_another_shape() -> None:
    plan = kql.compile(_model(), (3, 12, 12), patch=4)
    with pytest.raises(kql.KryptonError, match="compiled for"):
        plan.run(torch.randn(3, 14, 12))


def test_untraceable_model_is_a_krypton_error() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: export cannot capture it
                return x.flatten(1)
            return -x.flatten(1)

    with pytest.raises(kql.UnsupportedOperationError, match=r"cannot capture(.|\n)*x\.sum\(\)"):
        kql.occlusion_heatmap(Branchy().eval(), IMAGE, patch=4)


def test_score_map_outputs_are_region_scores_and_vectors_are_refused() -> None:
    """A map output is explained by region scores (tests/test_segmentation.py), alike in the
    engine and the oracle; a per-image vector that is not [N, classes] is still refused."""
    model = nn.Sequential(nn.Conv2d(3, 2, 3)).eval()
    got = kql.occlusion_heatmap(model, IMAGE, patch=4, stride=4, progress=False)
    assert torch.allclose(got, kql.naive_heatmap(model, IMAGE, patch=4, stride=4), atol=1e-6)
    vector = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(0)).eval()
    with pytest.raises(kql.UnsupportedOperationError, match=r"\[N, classes\]"):
        kql.occlusion_heatmap(vector, IMAGE, patch=4)


def test_reflect_padding_runs_as_the_exact_fallback() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    assert "reflect padding" in kql.explain(model, (3, 12, 12), patch=4)
    image = torch.randn(3, 12, 12)
    heatmap = kql.occlusion_heatmap(model, image, patch=4, progress=False)
    assert_matches_oracle(heatmap, model, image, patch=4)


def test_outputs_that_are_not_class_scores_per_image_are_refused() -> None:
    class Transposed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)).t()  # [classes, N]

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scores = nn.Parameter(torch.randn(1, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scores * 1.0

    with pytest.raises(kql.UnsupportedOperationError, match="batch axis first"):
        kql.occlusion_heatmap(Transposed().eval(), IMAGE, patch=4)
    with pytest.raises(kql.UnsupportedOperationError, match="does not depend on the image"):
        kql.occlusion_heatmap(Constant().eval(), IMAGE, patch=4)


class CountsItsCalls(nn.Module):
    """A model that writes a buffer in its forward: every call sees another model."""

    def __init__(self, through_view: bool = False) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)
        self.register_buffer("scale", torch.ones(2))
        self.through_view = through_view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.through_view:
            self.scale[:1].mul_(1.5)
        else:
            self.scale.mul_(1.5)
        return self.fc(torch.relu(self.conv(x) * self.scale[0]).mean((2, 3)))


@pytest.mark.parametrize("through_view", [False, True])
def test_a_model_that_writes_its_buffers_is_refused_and_left_as_it_was(through_view) -> None:
    model = CountsItsCalls(through_view).eval()
    for attempt in (
        lambda: kql.occlusion_heatmap(model, IMAGE, patch=4, stride=4, progress=False),
        lambda: kql.compile(model, IMAGE.shape, patch=4),
    ):
        with pytest.raises(kql.KryptonError, match="changes its buffer or parameter scale"):
            attempt()
        assert model.scale.tolist() == [1.0, 1.0]  # the checks' forwards were undone
    from compiler.importer import written_state

    program = torch.export.export(model, (IMAGE[None],))  # export alone lists no mutation
    assert not program.graph_signature.buffers_to_mutate
    assert written_state(program) == ["scale"]
