"""Registering models and images: tensors, lists, files and folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import krypton_ql as kql
from krypton_ql import models
from tests.helpers import assert_matches_oracle


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()


def _transform(photo: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(photo)).permute(2, 0, 1).float() / 255.0


def test_files_and_folders_are_named_by_stem_and_transformed(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for name in ("b_scan", "a_scan"):
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(
            tmp_path / f"{name}.png"
        )
    (tmp_path / "notes.txt").write_text("not an image")
    session = kql.connect()
    model = _model()
    session.register_model("cnn", model, transform=_transform)
    assert session.register_images("folder", tmp_path) == ["a_scan", "b_scan"]
    assert session.register_images("files", [tmp_path / "b_scan.png"]) == ["b_scan"]
    result = session.sql(
        "SELECT image, heatmap(prob) FROM occlusion(folder, cnn, patch => 3, "
        "stride => 3) GROUP BY image ORDER BY image"
    )
    photo = _transform(np.asarray(Image.open(tmp_path / "a_scan.png").convert("RGB")))
    assert result.rows[0][0] == "a_scan"
    assert_matches_oracle(torch.as_tensor(result.rows[0][1]), model, photo, patch=3, stride=3)


def test_lists_of_tensors_are_named_by_index() -> None:
    session = kql.connect()
    assert session.register_images("pair", [torch.randn(3, 8, 8), torch.randn(3, 8, 8)]) == [
        "0",
        "1",
    ]


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.randn(3, 8, 8), r"\[N, C, H, W\]"),
        (["missing.png"], "no such image files"),
        (42, "register_images takes"),
    ],
)
def test_bad_registrations(images, message: str) -> None:
    with pytest.raises(kql.KryptonError, match=message):
        kql.connect().register_images("bad", images)


def test_files_need_a_transform(tmp_path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    session = kql.connect()
    session.register_model("plain", _model())
    session.register_images("raw", tmp_path)
    with pytest.raises(kql.QueryError, match="no transform"):
        session.sql("SELECT y FROM occlusion(raw, plain, patch => 2)")


def test_the_built_in_catalog() -> None:
    session = kql.connect()
    assert session.register_images("extra", torch.zeros(1, 3, 4, 4)) == ["0"]
    names = list(session._images["photos"].items)
    assert names == list(models.SAMPLE_PHOTOS)
