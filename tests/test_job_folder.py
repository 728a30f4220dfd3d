"""A dataset job's folder reads as exactly one consistent job, whatever happens to it: a job
with other options refuses to resume into it, ``overwrite`` removes the job's own files only, a
second writer refuses at once, a killed writer's leftovers and failed images are redone, a
changed image file is explained again, and foreign files are neither read nor removed. A
hypothesis state machine drives random sequences of runs, kills, overwrites, changed options,
second writers, corrupt files and edited images, checking after every step that the folder
holds each image once with the heatmap of a clean run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from skimage import data, io

import krypton_ql as kql
from compiler.errors import InvalidInputError
from krypton_ql.integrations import datasets
from krypton_ql.integrations.datasets import engines
from krypton_ql.integrations.datasets.folder import JobFolder, Record
from tests.profiles import examples
from tests.test_datasets import TRANSFORM, small_model

JOBS = {  # two jobs that differ in their options
    "coarse": dict(patch=8, stride=8),
    "fine": dict(patch=16, stride=4),
}
PHOTOS = {"cat": data.chelsea(), "cup": data.coffee(), "rocket": data.rocket()}


def _save(folder: Path, name: str, photo: np.ndarray) -> None:
    io.imsave(folder / f"{name}.png", photo[::16, ::16], check_contrast=False)


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, photo in PHOTOS.items():
        _save(folder, name, photo)
    return folder


def _run(photos: Path, out: Path, job: str = "coarse", **options) -> Path:
    return kql.explain_dataset(photos, small_model, out=out, transform=TRANSFORM, progress=False,
                               **JOBS[job], **options)  # fmt: skip


def _rows(out: Path) -> dict[str, dict]:
    rows = datasets.read(out).to_pylist()
    ids = [row["image_id"] for row in rows]
    assert len(ids) == len(set(ids)), f"an image has two rows: {sorted(ids)}"
    return {Path(row["image_id"]).stem: row for row in rows}


_CLEAN: dict[tuple, np.ndarray] = {}


def _clean(path: Path, job: str) -> np.ndarray | None:
    """The heatmap a clean run gives the file as it is now (None: it does not decode)."""
    content = path.read_bytes()
    key = (hashlib.sha256(content).hexdigest(), job)
    if key not in _CLEAN:
        try:
            image = TRANSFORM(np.array(io.imread(path)))
        except (ValueError, OSError):
            return None
        model = small_model()
        _CLEAN[key] = kql.occlusion_heatmap(model, image, progress=False, **JOBS[job]).numpy()
    return _CLEAN[key]


def _check_heatmaps(photos: Path, rows: dict[str, dict], job: str) -> None:
    for name, row in rows.items():
        expected = _clean(photos / f"{name}.png", job)
        if expected is None:
            assert row["error"] is not None, name
            continue
        assert row["error"] is None, (name, row["error"])
        got = np.array(row["heatmap"], dtype=np.float32).reshape(row["heatmap_shape"])
        np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=name)


def test_another_jobs_folder_is_refused_and_overwrite_replaces_only_job_files(
    photos, tmp_path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "patients.parquet"  # the user's own data, with an image_id column
    pq.write_table(pa.table({"image_id": [str(photos / "cat.png")], "age": [7]}), mine)
    (out / "notes.txt").write_text("mine")
    _run(photos, out, overlays=True)
    assert sorted(_rows(out)) == ["cat", "cup", "rocket"]  # patients.parquet marks none done
    assert len(list((out / "overlays").glob("*.png"))) == 3
    (out / "overlays" / "my-drawing-12345678.png").write_bytes(b"mine")
    with pytest.raises(InvalidInputError, match=r"patch \(8, 8\) there, \(16, 16\) now"):
        _run(photos, out, "fine")
    with pytest.raises(InvalidInputError, match="target None there, 3 now"):
        _run(photos, out, target=3)
    _run(photos, out, "fine", overwrite=True)
    rows = _rows(out)
    assert sorted(rows) == ["cat", "cup", "rocket"]
    _check_heatmaps(photos, rows, "fine")
    assert mine.exists() and (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in (out / "overlays").iterdir()] == ["my-drawing-12345678.png"]


def test_failed_and_changed_images_are_explained_again(photos, tmp_path) -> None:
    out = tmp_path / "out"
    (photos / "cup.png").write_bytes(b"\x89PNG cut off")
    _run(photos, out)
    assert "cannot decode" in _rows(out)["cup"]["error"]
    _save(photos, "cup", PHOTOS["cup"])  # the file is fixed ...
    time.sleep(0.01)
    _save(photos, "rocket", PHOTOS["cat"])  # ... and another one edited
    (out / ".part-20260101-000000-0badc0de.parquet.tmp").write_bytes(b"half")  # a kill's
    _run(photos, out)
    rows = _rows(out)
    assert sorted(rows) == ["cat", "cup", "rocket"]
    _check_heatmaps(photos, rows, "coarse")
    assert not list(out.glob(".part-*.tmp"))


class Flaky:
    """The usual transform, except that it fails each image's first time (a failure that has
    nothing to do with the file)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def __call__(self, photo: np.ndarray) -> torch.Tensor:
        key = hash(photo.tobytes())
        if key not in self.seen:
            self.seen.add(key)
            raise RuntimeError("out of memory, this once")
        return TRANSFORM(photo)


def test_an_image_that_failed_is_retried_on_resume(photos, tmp_path) -> None:
    out, flaky = tmp_path / "out", Flaky()
    options = dict(out=out, transform=flaky, progress=False, **JOBS["coarse"])
    kql.explain_dataset(photos, small_model, **options)
    assert all("out of memory" in row["error"] for row in _rows(out).values())
    kql.explain_dataset(photos, small_model, **options)  # the same job, the same files
    rows = _rows(out)
    assert sorted(rows) == ["cat", "cup", "rocket"]
    _check_heatmaps(photos, rows, "coarse")


def test_a_second_writer_refuses_at_once(photos, tmp_path) -> None:
    out = tmp_path / "out"
    _run(photos, out)
    holder = subprocess.Popen(  # another process holds the folder's lock
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(out / '.kql-lock')!r}, os.O_RDWR)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nos.pwrite(fd, b'process 4242', 0)\n"
         "print('held', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(InvalidInputError, match=r"another job is writing to .* \(process 4242"):
            _run(photos, out, overwrite=True)
        assert time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()
    assert sorted(_rows(out)) == ["cat", "cup", "rocket"]  # nothing removed meanwhile
    _run(photos, out, overwrite=True)  # the lock went with the process


def test_out_must_be_a_writable_folder(photos, tmp_path, monkeypatch) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="is a file, not a folder"):
        _run(photos, tmp_path / "file")
    explained: list[str] = []
    monkeypatch.setattr(datasets.Explainer, "explain", lambda *a: explained.append(a[1]))
    original = Path.touch

    def read_only(path: Path, *args, **kwargs) -> None:
        if path.parent.name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        original(path, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", read_only)
    with pytest.raises(InvalidInputError, match="cannot write the job's rows to .*denied"):
        _run(photos, tmp_path / "locked")
    assert explained == []  # refused before any image


def test_a_job_killed_by_sigkill_resumes_to_a_clean_runs_rows(photos, tmp_path) -> None:
    out = tmp_path / "out"
    script = (
        "import sys, time\nsys.path.insert(0, '.')\n"
        "from krypton_ql.integrations.datasets import engines, workers\n"
        "from tests import test_job_folder as t\n"
        "engines.PART_ROWS = 1\n"
        "process = workers.Explainer.process\n"
        "def slow(*args):\n    time.sleep(1.0)\n    return process(*args)\n"
        "workers.Explainer.process = slow\n"
        f"t._run(t.Path({str(photos)!r}), t.Path({str(out)!r}))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + 120
    while not list(out.glob("part-*.parquet")):  # the first image's part is in
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert 1 <= len(_rows(out)) < 3
    _run(photos, out)
    rows = _rows(out)
    assert sorted(rows) == ["cat", "cup", "rocket"]
    _check_heatmaps(photos, rows, "coarse")


def test_a_sql_scan_folder_has_one_writer(photos, tmp_path) -> None:
    session = kql.connect()
    session.register_model("m", small_model(), transform=TRANSFORM)
    session.register_images("p", str(photos))
    query = "SELECT count(*) AS n FROM occlusion(p, m, patch => 8, stride => 8)"
    out = tmp_path / "jobs"
    assert session.sql(query, engine="local", out=out, progress=False).rows == [(48,)]
    (scan,) = out.iterdir()
    holder = JobFolder(scan, Record("occlusion scan", {"scan": scan.name}))
    for part in scan.glob("part-*.parquet"):
        part.unlink()  # the scan must be computed again, while someone else writes it
    with holder.writing(), pytest.raises(kql.KryptonError, match="another job is writing"):
        session.sql(query, engine="local", out=out, progress=False)
    assert session.sql(query, engine="local", out=out, progress=False).rows == [(48,)]


class Killed(BaseException):
    """A stand-in for SIGKILL inside the process: no ``except Exception`` stops it."""


class DatasetJobs(RuleBasedStateMachine):
    """Random sequences of what happens to a job folder; after each, it reads as one job."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="kql-machine-"))
        self.photos = self.root / "photos"
        self.photos.mkdir()
        for name, photo in PHOTOS.items():
            _save(self.photos, name, photo)
        self.out = self.root / "out"
        self.job: str | None = None  # the job recorded in the folder
        self.complete = False  # the last run finished and nothing changed since
        self.edited: set[str] = set()  # images changed since the last run started

    def _attempt(self, job: str, overwrite: bool, kill_after: int | None = None) -> None:
        """A run; with ``kill_after``, killed when it writes that many parts (0: mid-write of
        the first, leaving its temporary file)."""
        unrecorded = self.job is None and any(self.out.glob("part-*.parquet"))
        refused = not overwrite and (unrecorded or self.job not in (None, job))
        writes = 0
        original = JobFolder.write

        def write(folder: JobFolder, table: pa.Table) -> Path:
            nonlocal writes
            if kill_after is not None and writes >= kill_after:
                if kill_after == 0:
                    (folder.path / ".part-20260101-000000-0000dead.parquet.tmp").write_bytes(b"x")
                raise Killed
            writes += 1
            return original(folder, table)

        JobFolder.write = write  # type: ignore[method-assign]
        engines.PART_ROWS = 1
        try:
            _run(self.photos, self.out, job, overwrite=overwrite)
        except InvalidInputError as error:
            assert refused, error
            assert ("without a job record" if unrecorded else "another job's rows") in str(error)
            return
        except Killed:
            assert not refused
            self.job, self.complete = job, False
            self.edited.clear()
            return
        finally:
            JobFolder.write = original  # type: ignore[method-assign]
            engines.PART_ROWS = 64
        assert not refused
        self.job, self.complete = job, True
        self.edited.clear()

    @rule(job=st.sampled_from(sorted(JOBS)), overwrite=st.booleans())
    def run(self, job: str, overwrite: bool) -> None:
        self._attempt(job, overwrite)

    @rule(job=st.sampled_from(sorted(JOBS)), after=st.integers(0, 2))
    def killed_run(self, job: str, after: int) -> None:
        self._attempt(job, False, kill_after=after)

    @precondition(lambda self: self.job is not None)
    @rule()
    def second_writer(self) -> None:
        before = _rows(self.out)
        holder = JobFolder(self.out, Record("held", {}))
        with holder._locked(), pytest.raises(InvalidInputError, match="another job is writing"):
            _run(self.photos, self.out, self.job or "coarse", overwrite=True)
        assert _rows(self.out).keys() == before.keys()

    @rule(kind=st.sampled_from(["garbage part", "foreign parquet", "garbage parquet"]))
    def corrupt_file_appears(self, kind: str) -> None:
        self.out.mkdir(exist_ok=True)
        if kind == "garbage part":
            (self.out / "part-20260101-000000-0badf00d.parquet").write_bytes(b"not parquet")
        elif kind == "garbage parquet":
            (self.out / "notes.parquet").write_bytes(b"PAR1 nonsense")
        else:
            table = pa.table({"image_id": [str(self.photos / "cat.png")], "x": [1]})
            pq.write_table(table, self.out / "mine.parquet")

    @rule(name=st.sampled_from(sorted(PHOTOS)), broken=st.booleans())
    def edit_image(self, name: str, broken: bool) -> None:
        time.sleep(0.002)  # a new modification time
        if broken:
            (self.photos / f"{name}.png").write_bytes(b"\x89PNG broken")
        else:
            _save(self.photos, name, np.ascontiguousarray(PHOTOS[name][::-1]))
        self.edited.add(name)
        self.complete = False

    @invariant()
    def reads_as_one_job(self) -> None:
        if self.job is None:
            return
        rows = _rows(self.out)  # each image at most once
        fresh = {name: row for name, row in rows.items() if name not in self.edited}
        _check_heatmaps(self.photos, fresh, self.job)  # each row a clean run's
        if self.complete:
            assert sorted(rows) == sorted(PHOTOS)

    def teardown(self) -> None:
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


TestDatasetJobs = DatasetJobs.TestCase
TestDatasetJobs.settings = settings(max_examples=examples(8), stateful_step_count=8, deadline=None)
