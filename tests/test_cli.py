"""The ``kql`` command line: commands run in a subprocess, write the files they promise, and
fail with a message and exit status 2 — never a traceback — on bad input."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from skimage import data, io

from tests.helpers import assert_matches_oracle

pytestmark = pytest.mark.slow  # the command line in subprocesses, on the pretrained model

ROOT = Path(__file__).resolve().parents[1]


def kql(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "krypton_ql.apps.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    io.imsave(folder / "cat.png", data.chelsea())
    io.imsave(folder / "cup.jpg", data.coffee())
    return folder


def test_query_writes_heatmaps_pictures_and_rows(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sql = (
        "SELECT image, heatmap(prob) AS h, min(prob) AS worst FROM occlusion(images, model, "
        "patch => 32, stride => 32) GROUP BY image ORDER BY image"
    )
    done = kql("query", sql, "--images", str(photos), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "image | h" in done.stdout and "wrote 6 files" in done.stdout
    from krypton_ql import models

    model = models.efficientnet_lite0()
    for name, file in (("cat", "cat.png"), ("cup", "cup.jpg")):
        heatmap = np.load(out / f"{name}_h.npy")
        image = models.preprocess(io.imread(photos / file))  # the same file, read the same way
        assert_matches_oracle(torch.from_numpy(heatmap), model, image, patch=32, stride=32)
        assert (out / f"{name}_h.png").stat().st_size > 10_000
    with open(out / "results.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "h", "worst"]
    assert [r[:2] for r in rows[1:]] == [["cat", "cat_h.npy"], ["cup", "cup_h.npy"]]
    assert float(rows[1][2]) == pytest.approx(float(np.load(out / "cat_h.npy").min()), rel=1e-5)
    import pyarrow.parquet as pq

    table = pq.read_table(out / "results.parquet")
    assert table.column_names == ["image", "h", "worst"]
    assert table.column("worst").to_pylist()[0] == pytest.approx(float(rows[1][2]), rel=1e-5)


def test_compare_exact_writes_side_by_side_pictures(photos: Path, tmp_path: Path, capsys) -> None:
    from krypton_ql.apps.cli import main

    sql = (
        "SELECT image, heatmap(prob) AS h FROM occlusion(images, model, patch => 32, "
        "stride => 16, tau => 0.5) GROUP BY image"
    )
    out = tmp_path / "out"
    assert main(["query", sql, "--images", str(photos / "cat.png"), "--out", str(out),
                 "--compare-exact"]) == 0  # fmt: skip
    assert (out / "cat_h_vs_exact.png").stat().st_size > 10_000
    assert main(["query", sql.replace(", tau => 0.5", ""), "--compare-exact"]) == 2
    assert "needs a query with approximation options" in capsys.readouterr().err


def test_colour_limits_follow_the_heatmaps_class() -> None:
    """The bound statement, not the query's text, says what a heatmap aggregates and whether
    the statement chooses its classes."""
    from krypton_ql.apps.results import _clean_score
    from krypton_ql.dsl.outline import describe

    probabilities = torch.tensor([0.1, 0.7, 0.2])
    heatmap = "SELECT class, heatmap(prob) AS h FROM occlusion(images, model, patch => 8)"

    def score(query: str, row: tuple, class_column: int | None) -> float | None:
        return _clean_score(describe(query), "h", probabilities, row, class_column)

    assert score(heatmap + " GROUP BY class", (2, None), 0) == pytest.approx(0.2)
    alone = heatmap.replace("class, ", "")
    assert score(alone, (None,), None) == pytest.approx(0.7)  # the prediction
    assert score(alone + " WHERE class = 2", (None,), None) is None  # its own range
    assert score(alone.replace("patch => 8", "patch => 8, target => 2"), (None,), None) is None
    assert score(alone.replace("(prob)", "(drop)"), (None,), None) is None
    # the words alone do not decide: a column named class_count, a 'prob' in a string
    tricky = ("SELECT heatmap(prob) AS h, 'class' AS class_count FROM occlusion(images, model, "
              "patch => 8) WHERE image <> 'heatmap(prob)'")  # fmt: skip
    assert score(tricky, (None, None), None) == pytest.approx(0.7)


def test_compare_exact_runs_the_bound_statement_without_its_approximation() -> None:
    import krypton_ql
    from krypton_ql import models

    session = krypton_ql.connect()
    query = ("SELECT heatmap(prob) AS h FROM occlusion(photos, model, patch => 56, stride => 56, "
             "tau => 0.5) WHERE image = 'chelsea'")  # fmt: skip
    session.register_model("model", models.efficientnet_lite0(), transform=models.preprocess)
    assert session.outline(query).approximate
    exact = session.sql(query, exact=True, progress=False)
    assert "≈" not in session.last_plan.explain()
    plain = session.sql(query.replace(", tau => 0.5", ""), progress=False)
    assert torch.equal(exact.heatmaps, plain.heatmaps) and session.last_cached == 1


def test_a_bad_query_prints_the_caret_and_exits_2(photos: Path) -> None:
    done = kql("query", "SELECT y FROM occlusion(images, model, patch => 4, strid => 2)",
               "--images", str(photos))  # fmt: skip
    assert done.returncode == 2
    assert "unknown option 'strid'" in done.stderr and "^" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_command_has_help(capsys) -> None:
    from krypton_ql.apps.cli import main

    done = kql("--help")
    assert done.returncode == 0 and "usage: kql" in done.stdout and "Exit status" in done.stdout
    for command in (["query"], ["explain"], ["bench"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0 and "usage: kql" in capsys.readouterr().out, command


def test_explain_and_torchvision_weights_in_process(tmp_path: Path, capsys) -> None:
    from krypton_ql.apps.cli import main

    weights = tmp_path / "squeezenet.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), weights)
    sql = "SELECT heatmap(prob) FROM occlusion(photos, squeezenet1_1, patch => 32, stride => 32)"
    picture = tmp_path / "plan.png"
    assert main(["explain", sql, "--arch", "squeezenet1_1", "--weights", str(weights),
                 "--png", str(picture)]) == 0  # fmt: skip
    assert "== physical ==" in capsys.readouterr().out
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        main(["explain", sql, "--arch", "squeezenet1_1", "--weights", str(weights), "--sql"]) == 0
    )
    relational = capsys.readouterr().out.split("== relational (the incremental plan as SQL) ==")
    assert "CREATE TABLE u2 AS" in relational[1]  # the first convolution after the occlusion
    assert main(["explain", sql, "--arch", "squeezenet1_1"]) == 2
    assert "--arch and --weights go together" in capsys.readouterr().err
    assert main(["explain", sql, "--arch", "resnet18", "--weights", str(weights)]) == 2
    assert "does not fit resnet18" in capsys.readouterr().err
    assert main(["query", sql, "--model", "vgg16"]) == 2
    assert "the built-in model is efficientnet_lite0" in capsys.readouterr().err
    assert main(["query", sql, "--images", str(tmp_path / "missing.png")]) == 2
    assert "no such image file or folder" in capsys.readouterr().err


def test_demo_through_the_cli(tmp_path: Path, capsys) -> None:
    from krypton_ql.apps.cli import main

    args = ["demo", "--photos", "chelsea", "--patch", "56", "--stride", "28", "--out",
            str(tmp_path), "--naive-batch", "64"]  # fmt: skip
    assert main(args) == 0
    output = capsys.readouterr().out
    assert "chelsea" in output and "naive" in output and "SSIM" in output
    assert (tmp_path / "chelsea.png").stat().st_size > 10_000
    assert (tmp_path / "chelsea_tau.png").stat().st_size > 10_000


def test_shell_reads_statements_on_stdin(photos: Path, tmp_path: Path) -> None:
    database = tmp_path / "cells.duckdb"
    script = (
        "CREATE TABLE cells AS SELECT * FROM occlusion(images, model, patch => 112,\n"
        "  stride => 112) WHERE image = 'cat';\n"
        "SELECT image, label, count(*) AS n FROM cells GROUP BY ALL;\n"
        "SELECT oops;\n"
        ".tables\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "krypton_ql.apps.cli", "shell", "--images", str(photos)]
        + ["--database", str(database)],
        input=script,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "cat   | tiger cat | 4" in done.stdout and "cells" in done.stdout
    assert 'column "oops" was not found' in done.stderr and "Traceback" not in done.stderr


def test_an_unwritable_out_fails_before_the_query_runs(photos: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    done = kql("query", "SELECT heatmap(prob) FROM occlusion(images, model, patch => 8)",
               "--images", str(photos), "--out", str(blocker))  # fmt: skip
    assert done.returncode == 2 and "exists and is not a folder" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_failed_write_leaves_no_partial_results(
    photos: Path, tmp_path: Path, monkeypatch
) -> None:
    from krypton_ql.apps import cli

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.results, "write_results", broken)
    out = tmp_path / "results"
    sql = "SELECT image, heatmap(prob) AS h FROM occlusion(images, model, patch => 56, stride => 56) GROUP BY image"  # noqa: E501
    code = cli.main(["query", sql, "--images", str(photos / "cat.png"), "--out", str(out),
                     "--no-progress"])  # fmt: skip
    assert code == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no staging folder left


def test_a_closed_pipe_ends_quietly(photos: Path) -> None:
    command = (
        f"{sys.executable} -m krypton_ql.apps.cli explain "
        "'SELECT heatmap(prob) FROM occlusion(images, model, patch => 56, stride => 56)' "
        f"--images {photos} | head -1"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], cwd=ROOT, capture_output=True, text=True,
        timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.stdout.count("\n") == 1
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_an_image_above_the_pixel_limit_is_refused_with_the_option_to_raise_it(
    tmp_path: Path,
) -> None:
    from PIL import Image

    Image.new("1", (10_000, 10_000)).save(tmp_path / "huge.png")  # 10⁸ pixels, 12 KiB
    sql = "SELECT heatmap(prob) FROM occlusion(images, model, patch => 56, stride => 56)"
    done = kql("query", sql, "--images", str(tmp_path / "huge.png"), "--out", str(tmp_path / "o"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "100,000,000 pixels, above the limit of 89,478,485" in done.stderr
    assert "--max-pixels" in done.stderr and "Traceback" not in done.stderr
    assert "DecompressionBomb" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "SELECT 1/0 AS x FROM occlusion(photos, model, patch => 56, stride => 56)"],
         "Division by zero"),
        (["query", "SELECT * FROM occlusion(photos, model, patch => 0)"], "patch must be at least"),
        (["query", "SELECT * FROM occlusion(images, model, patch => 8)", "--images", "nope.png"],
         "no such image file or folder"),
        (["explain", "SELECT * FROM occlusion(images, model, patch => 8)", "--model", "nope"],
         "unknown model 'nope'"),
        (["explain", "SELECT * FROM occlusion(images, resnet18, patch => 8)", "--arch",
          "resnet18", "--weights", "missing.pt"], "cannot load weights from missing.pt"),
        (["explain", "SELECT * FROM occlusion(images, model, patch => 8)", "--max-pixels", "0"],
         "--max-pixels must be positive"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_a_message_and_no_traceback(args, message, capsys) -> None:
    from krypton_ql.apps.cli import main

    code = main(args)  # an escaping exception would fail this test
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("kql: error:"), err


def test_a_segmentation_architecture_with_a_region_file(tmp_path: Path, capsys) -> None:
    """``--arch`` takes torchvision's segmentation models; ``--region NAME=FILE`` registers a
    mask the query names; each class gets its own files, the picture outlines the region, and
    the heatmaps are the Python API's."""
    from PIL import Image

    import krypton_ql as kql
    from krypton_ql import models
    from krypton_ql.apps import cli

    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21
    ).eval()
    torch.save(model.state_dict(), tmp_path / "lraspp.pt")
    mask = np.zeros((224, 224), np.uint8)
    mask[40:150, 60:200] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    io.imsave(tmp_path / "cup.png", data.coffee())
    out = tmp_path / "out"
    sql = ("SELECT image, class, label, heatmap(prob) AS h FROM occlusion(images, model, "
           "patch => 112, stride => 112, region => 'cup') WHERE class IN (0, 15) "
           "GROUP BY image, class, label ORDER BY class")  # fmt: skip
    weights, region = str(tmp_path / "lraspp.pt"), f"cup={tmp_path / 'mask.png'}"
    arguments = ["--arch", "lraspp_mobilenet_v3_large", "--weights", weights,
                 "--images", str(tmp_path / "cup.png"), "--region", region]  # fmt: skip
    assert cli.main(["query", sql, "--out", str(out), *arguments]) == 0
    with open(out / "results.csv") as file:
        rows = list(csv.reader(file))
    assert [r[1:4] for r in rows[1:]] == [["0", "__background__", "cup_class0_h.npy"],
                                          ["15", "person", "cup_class15_h.npy"]]  # fmt: skip
    assert (out / "cup_class15_h.png").stat().st_size > 10_000
    image = models.imagenet_transform(224)(np.array(Image.open(tmp_path / "cup.png")))
    for klass in (0, 15):
        expected = kql.occlusion_heatmap(
            model, image, patch=112, stride=112, target=klass, region=torch.from_numpy(mask > 0),
            progress=False,
        )  # fmt: skip
        assert np.allclose(np.load(out / f"cup_class{klass}_h.npy"), expected.numpy(), atol=1e-5)
    for bad, message in (("cup", "write NAME=MASK_FILE"), ("cup=1,2,3", "four integers")):
        assert cli.main(["query", sql, *arguments[:4], "--region", bad]) == 2
        assert message in capsys.readouterr().err


def test_explain_dataset_writes_parquet_that_duckdb_reads(photos: Path, tmp_path: Path, capsys):
    import duckdb

    from krypton_ql.apps import cli

    out = tmp_path / "rows"
    arguments = ["explain-dataset", str(photos), "--patch", "112", "--out", str(out),
                 "--no-progress"]  # fmt: skip
    assert cli.main(arguments) == 0
    assert "2 images in" in capsys.readouterr().out
    rows = duckdb.sql(
        f"SELECT image_id, label, len(heatmap), heatmap_shape, error FROM '{out}/*.parquet' "
        "ORDER BY image_id"
    ).fetchall()  # fmt: skip
    assert [(Path(r[0]).name, r[2], r[3], r[4]) for r in rows] == [
        ("cat.png", 4, [2, 2], None), ("cup.jpg", 4, [2, 2], None)
    ]  # fmt: skip
    assert rows[0][1] and rows[1][1]  # ImageNet labels of the predictions
    assert cli.main(arguments) == 0  # resumed: nothing left to do
    assert len(list(out.glob("*.parquet"))) == 1


def test_explain_dataset_keeps_one_job_per_folder(photos: Path, tmp_path: Path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from krypton_ql.apps import cli
    from krypton_ql.integrations import datasets

    out = tmp_path / "rows"
    out.mkdir()
    pq.write_table(pa.table({"image_id": [str(photos / "cat.png")]}), out / "patients.parquet")
    common = ["explain-dataset", str(photos), "--out", str(out), "--no-progress"]
    assert cli.main([*common, "--patch", "112", "--overlays"]) == 0  # the summary skips them
    assert "2 images in" in capsys.readouterr().out
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert cli.main([*common, "--patch", "56"]) == 2
    error = capsys.readouterr().err
    assert "holds another job's rows (patch (112, 112) there, (56, 56) now" in error
    assert "--overwrite" in error and "Traceback" not in error
    assert cli.main([*common, "--patch", "56", "--overwrite"]) == 0
    assert datasets.read(out).column("heatmap_shape").to_pylist() == [[4, 4], [4, 4]]
    assert (out / "patients.parquet").exists()  # the user's file stays
    assert not list((out / "overlays").glob("*.png"))  # the old job's overlays went with it
    assert cli.main([*common[:3], str(out / "patients.parquet"), "--patch", "56"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_query_with_the_local_engine_runs_the_scan_as_a_job(photos: Path, tmp_path: Path, capsys):
    from krypton_ql.apps import cli

    sql = ("SELECT image, label, round(avg(drop), 4) AS d FROM occlusion(images, model, "
           "patch => 112, stride => 112) GROUP BY image, label ORDER BY image")  # fmt: skip
    common = ["query", sql, "--images", str(photos), "--no-progress"]
    assert cli.main([*common, "--out", str(tmp_path / "memory")]) == 0
    jobs = tmp_path / "jobs"
    arguments = [*common, "--out", str(tmp_path / "job"), "--engine", "local", "--jobs", str(jobs)]
    assert cli.main(arguments) == 0
    assert "(8 occlusion queries)" in capsys.readouterr().out
    memory, job = ((tmp_path / o / "results.csv").read_text() for o in ("memory", "job"))
    assert job == memory and len(job.splitlines()) == 3
    assert len(list(jobs.glob("scan-*/part-*.parquet"))) == 1  # the job's rows, kept
    assert cli.main(arguments) == 0  # read back, nothing computed
    assert "(0 occlusion queries)" in capsys.readouterr().out
    assert cli.main([*common, "--workers", "2"]) == 2  # workers without an engine
    assert "workers= needs engine='local' or engine='ray'" in capsys.readouterr().err


def test_a_segment_query_writes_painted_segments_with_their_outlines(tmp_path: Path, capsys):
    """``--segments NAME=FILE`` registers a label image; a segment scan's heatmap is written
    as ``.npy`` (the Python API's map) and as a picture with the segments outlined."""
    from PIL import Image

    import krypton_ql as kql
    from krypton_ql import models
    from krypton_ql.apps.cli import main

    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1().eval()
    torch.save(model.state_dict(), tmp_path / "squeezenet.pt")
    io.imsave(tmp_path / "cup.png", data.coffee())
    labels = (np.arange(224)[:, None] // 56) * 4 + np.arange(224)[None, :] // 56  # 16 tiles
    labels[100:110, :] = 20  # a thin band across every tile
    Image.fromarray(labels.astype(np.uint8)).save(tmp_path / "tiles.png")
    out = tmp_path / "out"
    sql = ("SELECT image, heatmap(drop) AS d, count(*) AS segments FROM occlusion(images, "
           "model, segments => 'tiles') GROUP BY image")  # fmt: skip
    arguments = ["--arch", "squeezenet1_1", "--weights", str(tmp_path / "squeezenet.pt"),
                 "--images", str(tmp_path / "cup.png"), "--segments",
                 f"tiles={tmp_path / 'tiles.png'}"]  # fmt: skip
    assert main(["query", sql, "--out", str(out), *arguments]) == 0
    with open(out / "results.csv") as file:
        rows = list(csv.reader(file))
    assert rows[1] == ["cup", "cup_d.npy", "17"]
    image = models.imagenet_transform(224)(data.coffee())
    expected = kql.ablation_scores(model, image, torch.from_numpy(labels), progress=False)
    assert np.allclose(np.load(out / "cup_d.npy"), expected.maps()[0, 0, 0].numpy(), atol=1e-5)
    assert (out / "cup_d.png").stat().st_size > 10_000
    capsys.readouterr()
    assert main(["query", sql, *arguments[:6], "--segments", "tiles"]) == 2
    assert "write NAME=LABEL_FILE" in capsys.readouterr().err


def test_an_ssim_target_from_the_command_line(tmp_path: Path, capsys) -> None:
    """``--ssim`` gives every scan that asks for no approximation its target: the built-in
    model's shipped profile serves patch 16, stride 4; another grid needs ``--profile``, and a
    profile file serves it."""
    from krypton_ql.apps.cli import main
    from tests.krypton_ql.test_refine import _profile

    sql = "SELECT heatmap(prob) FROM occlusion(photos, model, patch => 16, stride => 4)"
    assert main(["explain", sql, "--ssim", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "== ≈ quality target: SSIM ≥ 0.9 per heatmap →" in out and "candidate" in out
    assert main(["explain", sql, "--ssim", "1.5"]) == 2
    assert "ssim must be" in capsys.readouterr().err
    other = sql.replace("stride => 4", "stride => 16").replace("16,", "32,")
    assert main(["explain", other, "--ssim", "0.9"]) == 2
    assert "ssim needs a tuning profile" in capsys.readouterr().err
    profile = _profile(patch=32, stride=16)
    profile.save(tmp_path / "profile.json")
    assert main(["explain", other, "--ssim", "0.9", "--profile", str(tmp_path / "p.json")]) == 2
    assert main(["explain", other, "--ssim", "0.9", "--profile",
                 str(tmp_path / "profile.json")]) == 0  # fmt: skip
    assert "quality target: SSIM ≥ 0.9" in capsys.readouterr().out
    assert main(["explain", other.replace("16)", "16, tau => 0.5)"), "--ssim", "0.9"]) == 0
    assert "quality target" not in capsys.readouterr().out  # the scan's own approximation
