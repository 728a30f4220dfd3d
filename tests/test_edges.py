"""The edges a demanding user or an attacker reaches: inputs that used to give a silently wrong
heatmap or escape as a deep traceback now give the right answer or a ``KryptonError`` — and
the oracle (``naive_heatmap``) validates exactly as the engine does."""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import krypton_ql as kql
from compiler.errors import InvalidInputError, KryptonError, UnsupportedOperationError
from krypton_ql import photos, quality
from krypton_ql.quality.profile import Profile


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip


IMAGE = torch.rand(3, 8, 8)
HEATMAPS = (kql.occlusion_heatmap, kql.naive_heatmap)


class _InPlace(nn.Module):
    """``ReLU(inplace=True)``, ``add_`` and ``+=`` on a tensor that is read again."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = y * 1.0
        z.add_(1.0)
        z += y
        return self.head(self.relu(z) + y)


class _KeywordAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        return self.body(torch.add(y, other=y))


@pytest.mark.parametrize("model", [_InPlace, _KeywordAdd])
def test_in_place_and_keyword_calls_equal_naive(model) -> None:
    torch.manual_seed(1)
    module = model().eval()
    got = kql.occlusion_heatmap(module, IMAGE, patch=2, stride=2, progress=False)
    expected = kql.naive_heatmap(module, IMAGE, patch=2, stride=2, progress=False)
    assert torch.allclose(got, expected, atol=1e-5)


class _Dropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(F.dropout(x, 0.5, training=True))


def test_dropout_in_training_mode_inside_an_eval_model_is_refused() -> None:
    with pytest.raises(UnsupportedOperationError, match="training=True is random"):
        kql.occlusion_heatmap(_Dropout().eval(), IMAGE, patch=2, stride=2, progress=False)


@pytest.mark.parametrize("heatmap", HEATMAPS)
def test_a_colour_that_overflows_float32_is_refused(heatmap) -> None:
    with pytest.raises(InvalidInputError, match="overflows float32"):
        heatmap(_model(), IMAGE, patch=2, color=1e39, progress=False)


@pytest.mark.parametrize("heatmap", HEATMAPS)
def test_a_model_with_nan_outputs_is_an_error_not_a_nan_heatmap(heatmap) -> None:
    model = _model()
    model[0].weight.data[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="outputs on the clean image are not finite"):
        heatmap(model, IMAGE, patch=2, stride=2, progress=False)


def test_positions_are_checked_not_wrapped() -> None:
    plan = kql.compile(_model(), (3, 8, 8), patch=2, stride=2)
    every = plan.run(IMAGE, progress=False)
    for bad, message in [
        (torch.tensor([-1]), "position -1 is outside the grid's 0…15"),
        (torch.tensor([16]), "position 16 is outside"),
        (torch.tensor([1.5]), "must be integers"),
        (torch.tensor([], dtype=torch.int64), "positions is empty"),
        ("0", "an int tensor or a sequence of ints"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            plan.evaluate(IMAGE, positions=bad)
    chosen = plan.evaluate(IMAGE, positions=[3, 15]).heatmaps[0, 0].flatten()  # a list is fine
    assert torch.allclose(chosen[[3, 15]], every.flatten()[[3, 15]])
    assert torch.isnan(chosen[[0, 1, 2]]).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(stride=10**30), "larger than the 8×8 image"),
        (dict(speedup=float("nan")), "speedup must be a number greater than 1"),
        (dict(drilldown=1.0, drilldown_mode="lattice"), "drilldown=1 re-runs 100% of the cells"),
    ],
)
def test_option_edges_are_clear_errors(kwargs, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        kql.occlusion_heatmap(_model(), IMAGE, patch=2, progress=False, **kwargs)


@pytest.mark.parametrize("heatmap", HEATMAPS)
@pytest.mark.parametrize("model", [None, lambda x: x.mean((1, 2, 3))])
def test_a_model_that_is_not_a_module_is_refused(heatmap, model) -> None:
    with pytest.raises(InvalidInputError, match="model must be a torch.nn.Module"):
        heatmap(model, IMAGE, patch=2, progress=False)


@pytest.mark.parametrize("heatmap", HEATMAPS)
def test_meta_device_images_are_refused(heatmap) -> None:
    with pytest.raises(InvalidInputError, match="meta device"):
        heatmap(_model(), IMAGE.to("meta"), patch=2, progress=False)


class _Output(nn.Module):
    def __init__(self, shape: str) -> None:
        super().__init__()
        self.body, self.shape = _model(), shape

    def forward(self, x: torch.Tensor):
        scores = self.body(x)
        if self.shape == "tuple":
            return scores, scores
        if self.shape == "NK11":
            return scores[:, :, None, None]
        return scores[:, 0]


@pytest.mark.parametrize(
    ("image", "model", "error", "message"),
    [
        (IMAGE.double(), _model(), InvalidInputError, "torch.float64 but the model's"),
        (torch.rand(4, 8, 8), _model(), InvalidInputError, "does not accept inputs of shape"),
        (IMAGE, _Output("tuple"), UnsupportedOperationError, "one tensor of class scores"),
        (IMAGE, _Output("NK11"), UnsupportedOperationError, r"shape \[N, classes\]"),
        (IMAGE, _Output("N"), InvalidInputError, r"one score per image.*score='logit'"),
    ],
)
def test_the_oracle_validates_as_the_engine_does(image, model, error, message) -> None:
    for heatmap in HEATMAPS:
        with pytest.raises(error, match=message):
            heatmap(model.eval(), image, patch=2, stride=2, progress=False)


def test_quality_and_profile_errors_are_krypton_errors(tmp_path) -> None:
    with pytest.raises(KryptonError, match="at least 3 cells along every axis"):
        quality.ssim(torch.rand(2, 2), torch.rand(2, 2))
    with pytest.raises(KryptonError, match="two heatmaps of one shape"):
        quality.ssim(torch.rand(8, 8), torch.rand(9, 9))
    with pytest.raises(KryptonError, match="cannot read the tuning profile"):
        Profile.load(tmp_path / "missing.json")


def _png(path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(path)


def test_two_images_with_one_stem_are_an_error_naming_both(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _png(tmp_path / "a" / "x.png")
    _png(tmp_path / "b" / "x.jpg")
    session = kql.connect()
    with pytest.raises(InvalidInputError, match="both named 'x'.*a/x.png.*b/x.jpg"):
        session.register_images("photos", [tmp_path / "a" / "x.png", tmp_path / "b" / "x.jpg"])


def test_a_folder_skips_what_is_not_a_regular_image_file(tmp_path, caplog) -> None:
    _png(tmp_path / "good.png")
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with caplog.at_level(logging.WARNING):
        files = photos.image_files(tmp_path)
    assert [f.name for f in files] == ["good.png"]
    warnings = [r for r in caplog.records if "not regular files" in r.getMessage()]
    assert len(warnings) == 1 and "folder.png, loop.png, pipe.png" in warnings[0].getMessage()


class _Evil:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_weights_files_that_do_not_fit_say_why(tmp_path) -> None:
    import torchvision

    from krypton_ql import models

    state = torchvision.models.resnet18(weights=None).state_dict()
    shaped = {k: v for k, v in state.items() if k != "fc.bias"}
    shaped["fc.weight"] = torch.zeros(10, 512)
    files = {
        "prefixed": ({f"module.{k}": v for k, v in state.items()}, "'module.' prefix"),
        "integer_keys": ({1: torch.zeros(1)}, "entry 1 is not a parameter name and tensor"),
        "shapes": (shaped, r"1 missing keys \(fc.bias\); 1 shape mismatches \(fc.weight is "
                           r"\[10, 512\] in the file but \[1000, 512\] in the model\)"),
        "pickle": ({"a": _Evil()}, "could run code when loaded"),
    }  # fmt: skip
    for name, (content, message) in files.items():
        torch.save(content, tmp_path / f"{name}.pt")
        with pytest.raises(InvalidInputError, match=message):
            models.torchvision_model("resnet18", str(tmp_path / f"{name}.pt"))
    (tmp_path / "empty.pt").touch()
    with pytest.raises(InvalidInputError, match="the file is empty"):
        models.torchvision_model("resnet18", str(tmp_path / "empty.pt"))


def test_progress_with_stderr_closed_runs_without_a_bar(monkeypatch) -> None:
    import sys

    from krypton_ql.progress import progress_callback

    monkeypatch.setattr(sys, "stderr", None)
    with progress_callback(True, 10, "occlusion") as report:
        assert report is None
    got = kql.occlusion_heatmap(_model(), IMAGE, patch=2, stride=2, progress=True)
    assert torch.allclose(got, kql.naive_heatmap(_model(), IMAGE, patch=2, stride=2), atol=1e-6)
