"""Dataset jobs: every listed image gets exactly one Parquet row whose heatmap is the Python
API's, a bad image gets its error and the job goes on, a re-run resumes, and the Ray engine
writes the same rows as the local one (on a local Ray started inside the test)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from skimage import data, io
from torch import nn

import krypton_ql as kql
from compiler.errors import InvalidInputError
from krypton_ql import models
from krypton_ql.integrations import datasets

TRANSFORM = models.imagenet_transform(32)
OPTIONS = dict(patch=8, stride=8, transform=TRANSFORM, progress=False)


def small_model() -> nn.Module:
    """A picklable zero-argument factory (workers rebuild the model from it)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    ).eval()  # fmt: skip


class DiesOnce:
    """The usual transform, except that the first process to decode an image dies."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, photo: np.ndarray) -> torch.Tensor:
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)  # the actor's process dies mid-batch
        return TRANSFORM(photo)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name, photo in (("cat", data.chelsea()), ("cup", data.coffee()),
                        ("rocket", data.rocket()), ("astronaut", data.astronaut())):  # fmt: skip
        io.imsave(folder / f"{name}.png", photo[::8, ::8], check_contrast=False)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    return folder


def _rows(out: Path) -> dict[str, dict]:
    rows = [
        r for part in sorted(out.glob("part-*.parquet")) for r in pq.read_table(part).to_pylist()
    ]
    ids = [row["image_id"] for row in rows]
    assert len(ids) == len(set(ids)), "an image has two rows"
    return {Path(row["image_id"]).stem: row for row in rows}


def _expected(path: Path, target: int | None = None) -> tuple[int, torch.Tensor]:
    image = TRANSFORM(np.array(io.imread(path)))
    model = small_model()
    chosen = int(model(image[None]).argmax()) if target is None else target
    heatmap = kql.occlusion_heatmap(model, image, patch=8, stride=8, target=chosen,
                                    progress=False)  # fmt: skip
    return chosen, heatmap


def test_every_image_gets_its_row_and_a_bad_one_its_error(photos, tmp_path) -> None:
    out = kql.explain_dataset(photos, small_model, out=tmp_path / "out", **OPTIONS)
    rows = _rows(out)
    assert sorted(rows) == ["astronaut", "broken", "cat", "cup", "rocket"]
    assert "cannot decode" in rows["broken"]["error"] and rows["broken"]["heatmap"] is None
    for name in ("astronaut", "cat", "cup", "rocket"):
        row = rows[name]
        target, heatmap = _expected(photos / f"{name}.png")
        assert row["error"] is None and row["target"] == target
        assert row["heatmap_shape"] == [4, 4] and row["queries"] == 16
        got = torch.tensor(row["heatmap"]).reshape(row["heatmap_shape"])
        assert torch.allclose(got, heatmap, atol=1e-6)
        assert 0 < row["score"] < 1 and row["seconds"] > 0


def test_a_listing_gives_targets_and_a_rerun_resumes(photos, tmp_path) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text("path,target\n" + "".join(
        f"{photos / n}.png,{t}\n" for n, t in (("cat", 3), ("cup", ""), ("rocket", 1))
    ))  # fmt: skip
    out = tmp_path / "out"
    first = list(datasets.listing(listing))[:2]
    kql.explain_dataset([r["path"] for r in first], small_model, out=out, **OPTIONS)
    parts = set(out.glob("*.parquet"))
    cup = _rows(out)["cup"]
    # rocket is new and cat now asks for class 3: both are explained; cup keeps its row
    kql.explain_dataset(listing, small_model, out=out, **OPTIONS)
    rows = _rows(out)
    assert sorted(rows) == ["cat", "cup", "rocket"] and len(set(out.glob("*.parquet"))) == 2
    assert rows["cup"]["seconds"] == cup["seconds"] and rows["cat"]["target"] == 3
    assert rows["rocket"]["target"] == 1
    assert torch.allclose(torch.tensor(rows["rocket"]["heatmap"]).reshape(4, 4),
                          _expected(photos / "rocket.png", 1)[1], atol=1e-6)  # fmt: skip
    kql.explain_dataset(listing, small_model, out=out, **OPTIONS)  # nothing left: no new part
    assert len(set(out.glob("*.parquet"))) == 2
    (out / "notes.txt").write_text("mine")
    kql.explain_dataset(listing, small_model, out=out, overwrite=True, **OPTIONS)
    assert not parts & set(out.glob("*.parquet")) and len(_rows(out)) == 3
    assert (out / "notes.txt").read_text() == "mine"  # overwrite replaces the job's parts only
    assert _rows(out)["cat"]["target"] == 3  # the listing's target, not the prediction


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(engine="spark"), "engine must be 'local' or 'ray'"),
        (dict(colour=3), "unknown option 'colour'"),
        (dict(patch=0), "patch must be at least 1"),
        (dict(model=42), "model must be 'efficientnet_lite0'"),
        (dict(images="nowhere/"), "no such image folder"),
    ],
)
def test_bad_jobs_are_clear_errors(photos, tmp_path, arguments, message) -> None:
    options = {**OPTIONS, **arguments}
    images, model = options.pop("images", photos), options.pop("model", small_model)
    with pytest.raises(InvalidInputError, match=message):
        kql.explain_dataset(images, model, out=tmp_path / "out", **options)


def test_the_ray_engine_without_ray_is_a_clear_error(photos, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InvalidInputError, match=r"pip install 'krypton-ql\[ray\]'"):
        kql.explain_dataset(photos, small_model, out=tmp_path / "o", engine="ray", **OPTIONS)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_the_ray_engine_writes_the_local_engines_rows(photos, tmp_path, local_ray) -> None:
    """Bit for bit, at the same thread count (a Ray actor with one CPU runs torch on one
    thread; other thread counts sum in another order, equal to float rounding)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = _rows(kql.explain_dataset(photos, small_model, out=tmp_path / "local", **OPTIONS))
    finally:
        torch.set_num_threads(threads)
    remote = kql.explain_dataset(photos, small_model, out=tmp_path / "ray", engine="ray",
                                 workers=2, **OPTIONS)  # fmt: skip
    ray_rows = _rows(remote)
    assert sorted(ray_rows) == sorted(local)
    for name, row in local.items():
        other = ray_rows[name]
        assert {k: v for k, v in other.items() if k != "seconds"} == {
            k: v for k, v in row.items() if k != "seconds"
        }, name


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_image_redone(photos, tmp_path, local_ray) -> None:
    marker = tmp_path / "died"
    options = {**OPTIONS, "transform": DiesOnce(str(marker))}
    out = kql.explain_dataset(photos, small_model, out=tmp_path / "out", engine="ray",
                              workers=1, **options)  # fmt: skip
    assert marker.exists()  # a worker did die
    rows = _rows(out)  # and still every image has exactly one row
    assert sorted(rows) == ["astronaut", "broken", "cat", "cup", "rocket"]
    assert all(rows[n]["error"] is None for n in ("astronaut", "cat", "cup", "rocket"))


# -- SQL over dataset jobs: Session.sql(engine=…) -------------------------------------------

SCAN = "occlusion(photos, m, patch => 8, stride => 8)"
ROWS = f"SELECT image, class, row, col, prob, base_prob, drop FROM {SCAN} {{}} ORDER BY ALL"
GOOD = "WHERE image <> 'broken'"


def _session(photos: Path) -> kql.Session:
    session = kql.connect()
    session.register_model("m", small_model(), transform=TRANSFORM, classes=list("abcde"))
    session.register_images("photos", photos)
    return session


def test_sql_over_a_job_equals_the_scan_in_memory(photos, tmp_path, local_ray) -> None:
    session = _session(photos)
    memory = session.sql(ROWS.format(GOOD), progress=False).rows
    assert len(memory) == 4 * 16 and session.last_queries == 4 * 16
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a Ray actor of one CPU: one torch thread
    try:
        local = session.sql(ROWS.format(GOOD), progress=False, engine="local",
                            out=tmp_path / "local").rows  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert session.last_queries == 4 * 16
    remote = session.sql(ROWS.format(GOOD), progress=False, engine="ray", workers=2,
                         out=tmp_path / "ray").rows  # fmt: skip
    assert remote == local  # both engines, bit for bit
    assert [r[:4] for r in local] == [r[:4] for r in memory]  # batched in memory: rounding
    np.testing.assert_allclose([r[4:] for r in local], [r[4:] for r in memory], atol=2e-6)
    grouped = (f"SELECT label, count(*) AS n, avg(drop) AS d FROM {SCAN} {GOOD} "
               "GROUP BY label ORDER BY label")  # fmt: skip
    by_label = session.sql(grouped, progress=False, engine="ray", out=tmp_path / "ray").rows
    assert session.last_queries == 0 and session.last_cached == 1  # read from the Parquet
    expected = session.sql(grouped, progress=False).rows
    assert [r[:2] for r in by_label] == [r[:2] for r in expected]
    np.testing.assert_allclose([r[2] for r in by_label], [r[2] for r in expected], atol=2e-6)


def test_a_job_resumes_across_statements_and_sessions(photos, tmp_path) -> None:
    out = tmp_path / "jobs"
    session = _session(photos)
    session.sql(ROWS.format("WHERE image IN ('cat', 'cup')"), progress=False, engine="local",
                out=out)  # fmt: skip
    assert session.last_queries == 2 * 16
    rows = session.sql(ROWS.format(GOOD), progress=False, engine="local", out=out).rows
    assert session.last_queries == 2 * 16 and len(rows) == 4 * 16  # only the two new images
    again = _session(photos).sql(ROWS.format(GOOD), progress=False, engine="local", out=out)
    assert again.rows == rows
    other = _session(photos)
    other.register_model("m", nn.Sequential(small_model(), nn.Tanh()), transform=TRANSFORM)
    other.sql(ROWS.format(GOOD), progress=False, engine="local", out=out)
    assert other.last_queries == 4 * 16  # another model's weights: another job
    assert len(list(out.iterdir())) == 2


def test_an_image_that_fails_in_a_job_fails_the_statement_naming_it(photos, tmp_path) -> None:
    from krypton_ql.dsl.errors import QueryError

    session = _session(photos)
    statement = ROWS.format("WHERE image IN ('astronaut', 'broken', 'rocket')")  # in this order
    with pytest.raises(QueryError, match=r"1 of 3 images .* \(broken: .*could not be loaded"):
        session.sql(statement, progress=False, engine="local", out=tmp_path)
    session.sql(ROWS.format("WHERE image IN ('astronaut', 'rocket')"), progress=False,
                engine="local", out=tmp_path)  # fmt: skip
    assert session.last_queries == 0  # the others' rows were kept


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(engine="spark"), "engine must be None, 'local' or 'ray'"),
        (dict(workers=2), "workers= needs engine='local' or engine='ray'"),
        (dict(engine="ray", workers=0), "workers must be a positive integer"),
    ],
)
def test_bad_job_settings_are_clear_errors(photos, arguments, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        _session(photos).sql(ROWS.format(GOOD), progress=False, **arguments)


def test_overlays_are_written_beside_the_rows(photos, tmp_path) -> None:
    from PIL import Image

    out = kql.explain_dataset(photos, small_model, out=tmp_path / "out", overlays=True, **OPTIONS)
    pictures = sorted((out / "overlays").glob("*.png"))
    assert [p.name.rsplit("-", 1)[0] for p in pictures] == ["astronaut", "cat", "cup", "rocket"]
    with Image.open(pictures[1]) as picture:  # kql.render's two panels with a colour bar
        assert picture.size == (900, 440)
    assert "overlay" not in pq.read_table(next(out.glob("*.parquet"))).column_names


def test_a_ray_dataset_with_an_image_column(photos, tmp_path, local_ray) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("cat", "cup"):
        (folder / f"{name}.png").write_bytes((photos / f"{name}.png").read_bytes())
    dataset = local_ray.data.read_images(str(folder), include_paths=True)
    rows = _rows(kql.explain_dataset(dataset, small_model, out=tmp_path / "out", engine="ray",
                                     workers=1, **OPTIONS))  # fmt: skip
    assert sorted(rows) == ["cat", "cup"]
    for name, row in rows.items():
        target, heatmap = _expected(folder / f"{name}.png")
        assert row["error"] is None and row["target"] == target
        got = torch.tensor(row["heatmap"]).reshape(row["heatmap_shape"])
        assert torch.allclose(got, heatmap, atol=1e-6)
