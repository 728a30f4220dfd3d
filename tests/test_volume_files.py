"""Volumes and signals from files, in the query language and the CLI: NIfTI (``.nii``,
``.nii.gz``) and ``.npy`` inputs, one coordinate column per axis, ``heatmap()`` of a volume's
or a signal's rank, and a volume heatmap written as NIfTI with the input's affine and as a
montage."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch
from torch import nn

import krypton_ql as kql
from krypton_ql import volumes
from tests.helpers import assert_matches_oracle

PNG = b"\x89PNG\r\n\x1a\n"


def _volume_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip


def _signal_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(3, 4, 5, padding=2), nn.ReLU(), nn.AvgPool1d(2),
        nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(4, 2),
    ).eval()  # fmt: skip


AFFINE = np.array([[0.0, 0.0, 2.5, -30.0], [0.0, 1.5, 0.0, 12.0], [-1.5, 0.0, 0.0, 4.0],
                   [0.0, 0.0, 0.0, 1.0]])  # fmt: skip


@pytest.fixture
def scans(tmp_path: Path) -> dict[str, Path]:
    """Two channels of 6×8×10 voxels: as NIfTI [X, Y, Z, C] with an oblique affine, and as
    ``.npy`` [C, X, Y, Z]."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 8, 10, 2)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(data, AFFINE), str(tmp_path / "ct.nii.gz"))
    np.save(tmp_path / "same.npy", np.moveaxis(data, -1, 0))
    return {"nifti": tmp_path / "ct.nii.gz", "npy": tmp_path / "same.npy", "data": tmp_path}


def test_nifti_and_npy_read_channels_first_in_the_files_axis_order(scans) -> None:
    nifti = volumes.read(scans["nifti"])
    assert nifti.shape == (2, 6, 8, 10) and nifti.dtype == torch.float32
    torch.testing.assert_close(nifti, volumes.read(scans["npy"]), rtol=0, atol=0)
    np.testing.assert_allclose(volumes.VolumeFile(scans["nifti"]).affine, AFFINE)
    one = scans["data"] / "one.nii"
    nibabel.save(nibabel.Nifti1Image(np.ones((4, 5, 6), np.int16), np.eye(4)), str(one))
    assert volumes.read(one).shape == (1, 4, 5, 6)
    bad = scans["data"] / "bad.npy"
    np.save(bad, np.zeros((2, 2, 2, 2, 2)))
    with pytest.raises(kql.KryptonError, match=r"channels first .* got shape \[2, 2, 2, 2, 2\]"):
        volumes.read(bad)
    (scans["data"] / "junk.nii").write_bytes(b"not a volume")
    with pytest.raises(kql.KryptonError, match="not a readable NIfTI file"):
        volumes.read(scans["data"] / "junk.nii")


def test_a_volume_relation_has_a_column_per_axis_and_a_volume_heatmap(scans) -> None:
    model = _volume_model()
    session = kql.connect()
    session.register_model("net", model)
    session.register_images("scans", [str(scans["nifti"]), str(scans["npy"])])
    expected = kql.occlusion_heatmap(
        model, volumes.read(scans["nifti"]), patch=(2, 4, 4), stride=2, progress=False
    )
    assert expected.shape == (3, 3, 4)
    result = session.sql(
        "SELECT image, heatmap(prob) AS h, count(*) AS n, max(slice) AS s, max(z) AS z, "
        "max(row) AS r, max(y) AS y FROM occlusion(scans, net, patch => (2, 4, 4), stride => 2) "
        "GROUP BY image ORDER BY image"
    )
    assert [row[0] for row in result.rows] == ["ct", "same"]
    for _, heatmap, count, last_slice, last_z, last_row, last_y in result.rows:
        torch.testing.assert_close(heatmap, expected, rtol=0, atol=1e-6)
        assert (count, last_slice, last_z, last_row, last_y) == (36, 2, 4, 2, 4)
    assert result.heatmaps is not None and result.heatmaps.shape == (2, 3, 3, 4)
    session.cache.clear()  # else the cached relation answers it
    one_slice = session.sql(
        "SELECT heatmap(prob) AS h FROM occlusion(scans, net, patch => (2, 4, 4), stride => 2) "
        "WHERE image = 'ct' AND slice = 1"
    ).rows[0][0]
    assert session.last_queries == 12  # the slice predicate ran 12 of the 36 windows
    torch.testing.assert_close(one_slice[1], expected[1], rtol=0, atol=1e-6)
    assert torch.isnan(one_slice[0]).all() and torch.isnan(one_slice[2]).all()


def test_signals_are_one_row_of_windows() -> None:
    model = _signal_model()
    torch.manual_seed(1)
    signals = [torch.randn(3, 40), torch.randn(3, 40)]
    session = kql.connect()
    session.register_model("ecg", model)
    session.register_images("leads", signals)
    result = session.sql(
        "SELECT image, heatmap(prob) AS h, max(row) + max(y) + max(slice) + max(z) AS zero, "
        "max(col) AS c, max(x) AS x FROM occlusion(leads, ecg, patch => 8, stride => 4) "
        "GROUP BY image ORDER BY image"
    )
    for (_, heatmap, zero, last_col, last_x), signal in zip(result.rows, signals):
        assert heatmap.shape == (9,) and (zero, last_col, last_x) == (0, 8, 32)
        assert_matches_oracle(heatmap, model, signal, patch=8, stride=4)


def test_the_cli_writes_nifti_with_the_inputs_affine_and_a_montage(scans, tmp_path, capsys):
    from krypton_ql.apps.cli import main

    model = _volume_model()
    saved = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 2, 6, 8, 10),)), str(saved))
    out = tmp_path / "out"
    sql = (
        "SELECT image, heatmap(prob) AS h FROM occlusion(images, model, patch => (2, 4, 4), "
        "stride => 2) GROUP BY image"
    )
    argv = ["query", sql, "--model", str(saved), "--images", str(scans["nifti"]), "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    grid = np.load(out / "ct_h.npy")
    expected = kql.occlusion_heatmap(model, volumes.read(scans["nifti"]), patch=(2, 4, 4),
                                     stride=2, progress=False)  # fmt: skip
    np.testing.assert_allclose(grid, expected.numpy(), rtol=0, atol=1e-6)
    written = nibabel.load(str(out / "ct_h.nii.gz"))
    np.testing.assert_allclose(written.affine, AFFINE)
    voxels = np.asarray(written.dataobj)
    assert voxels.shape == (6, 8, 10)
    # voxel (3, 5, 9): the nearest window centres are 2.5 (cell 1 of 0.5, 2.5, 4.5), 5.5
    # (cell 2 of 1.5, 3.5, 5.5) and 7.5 (the last cell, 3)
    assert voxels[3, 5, 9] == grid[1, 2, 3] and voxels[0, 0, 0] == grid[0, 0, 0]
    assert (out / "ct_h.png").read_bytes()[:8] == PNG
    assert main(["query", sql, "--model", str(tmp_path / "nothing.pt2")]) == 2
    assert "no such model file" in capsys.readouterr().err
