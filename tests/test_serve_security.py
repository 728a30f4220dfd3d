"""``kql serve`` against an attacker and a careless user (through the ASGI client; the browser's
side is in tests/test_serve_browser.py): the SQL box reads, lists, writes, attaches, installs and
sets nothing; a page of another origin, a DNS-rebinding host and a non-JSON body are refused;
bodies are bounded; statements stop at their time limit or on cancel and convert only the rows
they show; odd column types and broken uploads are clear messages; two uploads of one name
never share a file."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

import krypton_ql as kql
from krypton_ql import models, photos
from krypton_ql.apps.serve.app import create_app
from krypton_ql.apps.serve.explorer import Explorer
from tests.helpers import small_cnn

BASE = "http://127.0.0.1:8000"


@pytest.fixture
def explorer(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "a.png")
    session = kql.connect()
    transform = models.imagenet_transform(32)
    session.register_model("model", small_cnn(), transform=transform, classes=list("wxyz"))
    session.register_images("images", str(folder))
    state = Explorer(session, "images", lambda image: image, ["model"], sql_seconds=5)
    yield state
    state.close()


def _client(explorer: Explorer, **options) -> TestClient:
    return TestClient(create_app(explorer), base_url=BASE, raise_server_exceptions=False,
                      **options)  # fmt: skip


def _sql(client: TestClient, query: str, **headers) -> tuple[int, dict]:
    response = client.post("/api/sql", json={"query": query}, headers=headers)
    return response.status_code, response.json()


def test_the_sql_box_reaches_no_file_network_or_setting(explorer, tmp_path) -> None:
    client = _client(explorer)
    target = tmp_path / "written.csv"
    database = tmp_path / "attached.duckdb"
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    reads = [
        f"SELECT * FROM read_csv('{secret}', header = false)",
        f"SELECT * FROM read_text('{secret}')",
        f"SELECT * FROM read_blob('{secret}')",
        f"SELECT * FROM glob('{tmp_path}/*')",
        "SELECT * FROM read_csv('https://example.com/x.csv')",
    ]
    for query in reads:
        status, answer = _sql(client, query)
        assert status == 400 and "Permission Error" in answer["error"], query
    status, answer = _sql(client, f"SELECT * FROM '{secret}'")  # no file is a table any more
    assert status == 400 and "does not exist" in answer["error"]
    refused = [
        f"COPY (SELECT 'x') TO '{target}'",
        f"ATTACH '{database}'",
        "SET custom_extension_repository = 'http://127.0.0.1:9/'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "CREATE TABLE t AS SELECT 1",
        "PRAGMA enable_profiling",
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{target}'",
        f"SELECT 1; COPY (SELECT 'x') TO '{target}'",
        "SET enable_external_access = true",
    ]
    for query in refused:
        status, answer = _sql(client, query)
        assert status == 400 and "refused" in answer["error"] or "one statement" in answer[
            "error"], (query, answer)  # fmt: skip
    assert not target.exists() and not database.exists()
    session = explorer.session
    assert session.engine.query("SELECT current_setting('enable_external_access')")[0][0].as_py()\
        is False  # fmt: skip
    status, answer = _sql(client, "SELECT 41 + 1 AS answer")  # queries still run
    assert status == 200 and answer["rows"] == [[42]]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Origin": "http://evil.example"}, "requests from http://evil.example are refused"),
        ({"Origin": "null"}, "requests from null are refused"),
        ({"Host": "evil.example:8000"}, "does not answer to the host"),  # DNS rebinding
        ({"Host": "127.0.0.1:9999"}, "does not answer to the host"),
        ({"Sec-Fetch-Site": "cross-site"}, "other sites are refused"),
        ({"Sec-Fetch-Site": "same-site"}, "other sites are refused"),  # another local port
        ({"Content-Type": "text/plain"}, "send the body as application/json"),
    ],
)
def test_requests_from_elsewhere_are_refused(explorer, tmp_path, headers, message) -> None:
    client = _client(explorer)
    target = tmp_path / "x.csv"
    body = f'{{"query": "COPY (SELECT 1) TO \'{target}\'"}}'
    response = client.post("/api/sql", content=body,
                           headers={"Content-Type": "application/json", **headers})  # fmt: skip
    assert response.status_code == 403 and message in response.json()["error"]
    assert not target.exists()
    start = client.post("/api/runs", content='{"image": "a"}',
                        headers={"Content-Type": "application/json", **headers})  # fmt: skip
    assert start.status_code == 403


def test_the_explorers_own_page_and_names_are_served(explorer) -> None:
    own = _client(explorer)
    assert own.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # a link
    page = own.get("/")
    assert page.headers["x-frame-options"] == "DENY"
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
        headers = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        response = own.post("/api/sql", json={"query": "SELECT 1 AS one"}, headers=headers)
        assert response.status_code == 200, (host, response.text)
    anywhere = TestClient(create_app(explorer, "t", host="0.0.0.0"), base_url="http://box:80")
    assert anywhere.get("/api/config?token=t").status_code == 200  # any name, with the token
    assert anywhere.get("/api/config").status_code == 403


def test_bodies_are_bounded_and_checked(explorer) -> None:
    client = _client(explorer)
    big = client.post("/api/sql", json={"query": "SELECT 1 -- " + "x" * (2 << 20)})
    assert big.status_code == 413 and "above the limit" in big.json()["error"]

    def chunks():  # no Content-Length: the server counts as it reads
        for _ in range(40):
            yield b" " * 4096

    streamed = client.post("/api/runs", content=chunks(),
                           headers={"Content-Type": "application/json"})  # fmt: skip
    assert streamed.status_code == 413
    deep = client.post("/api/runs", content="[" * 5000 + "]" * 5000,
                       headers={"Content-Type": "application/json"})  # fmt: skip
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]
    broken = client.post("/api/sql", content="{", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "not JSON" in broken.json()["error"]


def test_statements_stop_at_their_time_limit_and_on_cancel(explorer) -> None:
    client = _client(explorer)
    explorer.sql_seconds = 0.5
    started = time.perf_counter()
    status, answer = _sql(client, "SELECT count(*) FROM range(100000000000)")
    assert status == 400 and "stopped after 0.5 s" in answer["error"]
    assert time.perf_counter() - started < 30
    explorer.sql_seconds = 60
    outcome: dict = {}

    def long_statement() -> None:
        outcome["answer"] = _sql(client, "SELECT count(*) FROM range(100000000000)",
                                 **{"X-KQL-Client": "page"})  # fmt: skip

    thread = threading.Thread(target=long_statement)
    thread.start()
    deadline = time.monotonic() + 20
    while not client.post("/api/sql/cancel", headers={"X-KQL-Client": "page"}).json()[
        "cancelled"
    ]:  # until the statement is there to cancel
        assert time.monotonic() < deadline
        time.sleep(0.05)
    thread.join(timeout=30)
    status, answer = outcome["answer"]
    assert status == 400 and "cancelled" in answer["error"]
    status, answer = _sql(client, "SELECT 1 AS still_serving")
    assert status == 200 and answer["rows"] == [[1]]


def test_an_occlusion_scan_in_the_sql_box_stops_at_the_time_limit(explorer) -> None:
    explorer.sql_seconds = 0.001  # over before the scan's first batch is done
    query = "SELECT count(*) FROM occlusion(images, model, patch => 1, stride => 1)"
    status, answer = _sql(_client(explorer), query)
    assert status == 400 and "stopped after 0.001 s" in answer["error"]
    assert explorer.session.last_queries == 0  # the scan's rows never reached DuckDB


def test_results_are_cut_before_they_are_converted(explorer) -> None:
    status, answer = _sql(_client(explorer), "SELECT * FROM range(3000000)")
    assert status == 200 and answer["count"] == 3_000_000 and answer["truncated"]
    assert len(answer["rows"]) == 200 and answer["rows"][-1] == [199]
    result = explorer.session.sql("SELECT i, i * 2 AS j FROM range(3000000) t(i)", max_rows=5)
    assert len(result) == 5 and result.total_rows == 3_000_000
    assert result.arrow().num_rows == 5 and result.rows[-1] == (4, 8)


def test_every_duckdb_type_comes_back_as_json(explorer) -> None:
    query = (
        "SELECT DATE '2026-12-04' AS d, TIMESTAMP '2026-12-04 17:24:16' AS ts, "
        "TIME '01:02:03' AS t, 1.50::DECIMAL(10, 2) AS dec, 12345678901234567890.12::"
        "DECIMAL(38, 2) AS wide, 'a\\x00b'::BLOB AS blob, INTERVAL 3 DAY AS span, "
        "uuid() IS NOT NULL AS has_uuid, {'k': [1, 2]} AS nested, MAP {'a': 1} AS map, "
        "'nan'::DOUBLE AS nan, 2::HUGEINT AS huge"
    )
    status, answer = _sql(_client(explorer), query)
    assert status == 200, answer
    row = dict(zip(answer["columns"], answer["rows"][0]))
    assert row["d"] == "2026-12-04" and row["ts"] == "2026-12-04T17:24:16"
    assert row["t"] == "01:02:03" and row["dec"] == 1.5 and row["wide"] == "12345678901234567890.12"
    assert row["blob"] == "a\\x00b" and row["nested"] == {"k": [1, 2]} and row["nan"] is None
    assert row["span"] == {"months": 0, "days": 3, "nanoseconds": 0}
    assert row["has_uuid"] is True and row["huge"] == 2 and row["map"] in ({"a": 1}, [["a", 1]])


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_broken_and_elongated_uploads_are_clear_errors(explorer, monkeypatch) -> None:
    client = _client(explorer)
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = _png(noise)
    jpeg = io.BytesIO()
    Image.fromarray(noise).save(jpeg, format="JPEG")
    for name, data in (("cut.png", png[: len(png) // 2]), ("cut.jpg", jpeg.getvalue()[:400])):
        answer = client.post("/api/upload", files={"file": (name, data)})
        assert answer.status_code == 400 and "cannot decode" in answer.json()["error"], name
    strip = _png(np.zeros((1, 6000, 3), dtype=np.uint8))  # a few hundred bytes
    monkeypatch.setattr(photos, "MAX_PIXELS", 1_000_000)  # the transform resizes to 37
    answer = client.post("/api/upload", files={"file": ("strip.png", strip)})
    assert answer.status_code == 400 and "would be resized to 37×222,000" in answer.json()["error"]
    assert client.get("/api/config").json()["photos"] == ["a"]  # neither was kept


def test_the_built_in_transform_refuses_a_strip_before_allocating_it() -> None:
    with pytest.raises(kql.KryptonError, match=r"256×1,536,000 = 393,216,000 pixels"):
        models.preprocess(np.zeros((1, 6000, 3), dtype=np.uint8))


def test_uploads_of_one_name_never_share_a_file(explorer) -> None:
    photos = [np.full((32, 32, 3), value, dtype=np.uint8) for value in range(0, 240, 20)]
    names: list[str | None] = [None] * len(photos)
    barrier = threading.Barrier(len(photos))

    def upload(index: int) -> None:
        barrier.wait()
        names[index] = explorer.upload("same.png", _png(photos[index]))

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(photos))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == len(photos)
    for name, photo in zip(names, photos):
        assert name is not None
        kept = np.array(Image.open(Path(explorer._uploads.name) / f"{name[8:]}.png"))
        assert (kept == photo).all(), name  # each name serves its own photo


@pytest.mark.slow
def test_sigterm_stops_the_server_and_removes_its_uploads(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    kql_command = Path(sys.executable).parent / "kql"
    server = subprocess.Popen(
        [str(kql_command), "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        line = server.stdout.readline()
        assert "open http" in line, server.stderr.read()
        url = line.split("open ")[1].split()[0]
        boundary = "kqlboundary"
        photo = _png(np.full((40, 40, 3), 128, dtype=np.uint8))
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + photo
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            url + "api/upload", data=body, method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
        (uploads,) = scratch.glob("kql-serve-*")
        assert list(uploads.glob("*.png"))
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        server.kill()
    assert not list(scratch.glob("kql-serve-*"))
