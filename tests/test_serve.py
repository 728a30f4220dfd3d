"""``kql serve`` through its HTTP API (Starlette's test client; the page itself is driven in a
real browser in tests/test_serve_browser.py): runs stream exact heatmaps that equal
``kql.occlusion_heatmap``, the SQL statement they show computes the same cells, regions,
cancel, downloads, uploads, the token, and errors as messages."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

import krypton_ql as kql
from krypton_ql import photos
from krypton_ql.apps.serve import runs as runs_module
from krypton_ql.apps.serve.app import create_app
from krypton_ql.apps.serve.explorer import Explorer
from krypton_ql.apps.serve.runs import RunRequest, region_positions
from tests.helpers import small_cnn


def _to_input(photo: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(photo).permute(2, 0, 1).float() / 255


@pytest.fixture
def explorer(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / f"{name}.png"
        )
    session = kql.connect()
    model = small_cnn()
    session.register_model("model", model, transform=_to_input, classes=["w", "x", "y", "z"])
    session.register_images("images", str(tmp_path))
    state = Explorer(session, "images", lambda image: image, ["model"])
    yield state
    state.close()


BASE = "http://127.0.0.1:8000"  # a loopback server's own address: its Host and Origin


def _client(explorer: Explorer, token: str | None = None, **options) -> TestClient:
    return TestClient(create_app(explorer, token), base_url=BASE, **options)


def _events(client: TestClient, run: str) -> list[dict]:
    events = []
    with client.stream("GET", f"/api/runs/{run}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def _run(client: TestClient, **options) -> tuple[str, list[dict]]:
    response = client.post("/api/runs", json=options, headers={"X-KQL-Client": "test"})
    assert response.status_code == 200, response.text
    run = response.json()["run"]
    return run, _events(client, run)


def _received(events: list[dict], rows: int, cols: int) -> np.ndarray:
    heatmap = np.full(rows * cols, np.nan)
    for event in events:
        if event["type"] == "cells":
            heatmap[event["index"]] = event["values"]
    return heatmap.reshape(rows, cols)


def test_a_run_streams_the_exact_heatmap_coarse_first(explorer) -> None:
    client = _client(explorer)
    run, events = _run(client, image="a", patch=4, stride=2)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("cells") >= 3
    start = events[0]
    rows, cols = start["rows"], start["cols"]
    cells = [e for e in events if e["type"] == "cells"]
    first = np.array(cells[0]["index"])
    assert set((first // cols) % 4) == {0} and set((first % cols) % 4) == {0}  # coarse first
    image = explorer.image("a")
    expected = kql.occlusion_heatmap(explorer.session.model("model").get(), image, patch=4,
                                     stride=2, progress=False)  # fmt: skip
    torch.testing.assert_close(torch.from_numpy(_received(events, rows, cols)).float(), expected,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert start["class"] == int(explorer.session.model("model").get()(image[None]).argmax())
    assert events[-1]["queries"] == rows * cols and events[-1]["naive_seconds"] > 0
    # The statement the page shows runs as-is and computes the same heatmap.
    result = explorer.session.sql(start["sql"], progress=False)
    torch.testing.assert_close(result.heatmaps[0], expected, rtol=1e-5, atol=1e-6)


def test_a_region_computes_the_positions_whose_patch_centre_it_holds(explorer) -> None:
    client = _client(explorer)
    region = [4, 8, 20, 30]
    run, events = _run(client, image="b", patch=4, stride=2, region=region, mode="tau", value=0.7)
    start = events[0]
    rows, cols = start["rows"], start["cols"]
    received = _received(events, rows, cols)
    computed = np.flatnonzero(~np.isnan(received.ravel()))
    plan = kql.compile(explorer.session.model("model").get(), (3, 32, 32), patch=4, stride=2,
                       tau=0.7)  # fmt: skip
    top, left = plan.positions.top + 2, plan.positions.left + 2
    inside = np.flatnonzero((top >= 4) & (top < 20) & (left >= 8) & (left < 30))
    assert computed.tolist() == inside.tolist() == region_positions(plan, tuple(region)).tolist()
    full = plan.run(explorer.image("b"), progress=False).numpy().ravel()
    np.testing.assert_allclose(received.ravel()[computed], full[computed], rtol=1e-5, atol=1e-6)
    result = explorer.session.sql(start["sql"], progress=False)  # the pushdown computes the same
    sql_cells = result.heatmaps[0].numpy().ravel()
    assert np.flatnonzero(~np.isnan(sql_cells)).tolist() == computed.tolist()
    np.testing.assert_allclose(sql_cells[computed], full[computed], rtol=1e-5, atol=1e-6)
    assert "tau => 0.7" in start["sql"] and "y + 2 BETWEEN 4 AND 19" in start["sql"]


def test_cancel_stops_the_run_and_a_new_run_cancels_the_clients_last(explorer, monkeypatch):
    monkeypatch.setattr(runs_module, "_chunk", lambda plan: 1)  # one position per batch
    client = _client(explorer)
    options = dict(image="a", patch=2, stride=1)
    run = client.post("/api/runs", json=options, headers={"X-KQL-Client": "c"}).json()["run"]
    events = []
    with client.stream("GET", f"/api/runs/{run}/events") as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(json.loads(line[6:]))
            if events[-1]["type"] == "cells" and len(events) == 2:
                assert client.post(f"/api/runs/{run}/cancel").json()["cancelled"]
    assert events[-1]["type"] == "cancelled"
    assert 1 <= events[-1]["done"] < events[0]["positions"]
    # The same client's second run cancels its first.
    first = client.post("/api/runs", json=options, headers={"X-KQL-Client": "c"}).json()["run"]
    second = client.post("/api/runs", json=options, headers={"X-KQL-Client": "c"}).json()["run"]
    assert explorer.run(first).cancelled.is_set() and not explorer.run(second).cancelled.is_set()
    explorer.run(second).cancel()


def test_downloads_hold_the_heatmap(explorer) -> None:
    client = _client(explorer)
    run, events = _run(client, image="a", patch=8, stride=8)
    received = _received(events, events[0]["rows"], events[0]["cols"])
    npy = client.get(f"/api/runs/{run}/heatmap.npy")
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), received.astype(np.float32))
    lines = client.get(f"/api/runs/{run}/heatmap.csv").text.strip().splitlines()
    assert lines[0] == "row,col,y,x,prob,drop" and len(lines) == 1 + received.size
    row = lines[1].split(",")
    assert float(row[4]) == pytest.approx(received[0, 0], rel=1e-5)
    assert float(row[5]) == pytest.approx(events[0]["base"] - received[0, 0], rel=1e-4, abs=1e-6)
    png = client.get(f"/api/runs/{run}/heatmap.png")
    assert (
        png.content[:8] == b"\x89PNG\r\n\x1a\n"
        and "attachment" in png.headers["content-disposition"]
    )
    plan = client.get(f"/api/runs/{run}/plan.png")
    assert plan.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert "== rewritten" in client.get(f"/api/runs/{run}/plan.txt").text


def test_bad_requests_get_the_clis_messages_not_tracebacks(explorer) -> None:
    client = _client(explorer, raise_server_exceptions=False)
    cases = [
        (dict(image="a", patch=0, stride=2), "patch"),
        (dict(image="nope", patch=4, stride=2), "unknown image 'nope'"),
        (dict(image="a", patch=4, stride=2, mode="tau", value=1.5), "tau must be in (0, 1]"),
        (dict(image="a", patch=4, stride=2, region=[0, 0, 1, 1]), "no patch centre"),
        (dict(image="a", patch="big"), "patch must be an integer"),
        (dict(image="a", patch=4, stride=2, weights="/etc/passwd"), "unknown run options"),
    ]
    for options, message in cases:
        response = client.post("/api/runs", json=options)
        if response.status_code == 200:  # checked when the run starts: an error event
            events = _events(client, response.json()["run"])
            assert events[-1]["type"] == "error" and message in events[-1]["message"], options
        else:
            assert response.status_code == 400 and message in response.json()["error"], options
    run, events = _run(client, image="a", patch=4, stride=2, mode="ssim", value=0.9)
    assert events[-1]["type"] == "error" and "tuning profile" in events[-1]["message"]
    missing = client.get("/api/runs/0000/events")
    assert missing.status_code == 400 and "no run" in missing.json()["error"]
    assert client.get("/no/such/page").status_code == 404
    answer = client.post("/api/sql", json={"query": "SELECT nope FROM occlusion(images, model)"})
    assert answer.status_code == 400 and "^" in answer.json()["error"]


def test_sql_runs_against_the_session(explorer) -> None:
    client = _client(explorer)
    query = ("SELECT image, max(drop) AS top, heatmap(prob) AS h FROM occlusion(images, model, "
             "patch => 8, stride => 8) GROUP BY image ORDER BY image")  # fmt: skip
    answer = client.post("/api/sql", json={"query": query}).json()
    assert answer["columns"] == ["image", "top", "h"] and answer["count"] == 2
    assert [row[0] for row in answer["rows"]] == ["a", "b"]
    expected = kql.occlusion_heatmap(explorer.session.model("model").get(), explorer.image("a"),
                                     patch=8, stride=8, progress=False)  # fmt: skip
    np.testing.assert_allclose(np.array(answer["rows"][0][2]), expected.numpy(), rtol=1e-5)


def test_uploads_are_decoded_with_the_clis_checks(explorer, monkeypatch) -> None:
    client = _client(explorer)
    buffer = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")  # about 3 KB
    answer = client.post("/api/upload", files={"file": ("../../my photo.png", buffer.getvalue())})
    assert answer.status_code == 200, answer.text
    name = answer.json()["name"]
    assert name == "uploads/my_photo" and name in client.get("/api/config").json()["photos"]
    run, events = _run(client, image=name, patch=8, stride=8)
    assert events[-1]["type"] == "done"
    assert client.get(f"/api/photo?name={name}").content[:4] == b"\x89PNG"
    refused = client.post("/api/upload", files={"file": ("notes.png", b"not an image")})
    assert refused.status_code == 400 and "not an image" in refused.json()["error"]
    explorer.max_upload_bytes = 100
    big = client.post("/api/upload", files={"file": ("big.png", buffer.getvalue())})
    assert big.status_code == 400 and "above the limit" in big.json()["error"]
    monkeypatch.setattr(photos, "MAX_PIXELS", 100)
    explorer.max_upload_bytes = 10**6
    wide = client.post("/api/upload", files={"file": ("wide.png", buffer.getvalue())})
    assert (
        wide.status_code == 400 and "1,024 pixels, above the limit of 100" in wide.json()["error"]
    )


def test_a_token_guards_every_route(explorer) -> None:
    client = _client(explorer, "s3cret")
    assert client.get("/api/config").status_code == 403
    assert client.get("/").status_code == 403
    assert client.get("/api/config?token=wrong").status_code == 403
    assert client.get("/api/config", headers={"X-KQL-Token": "s3cret"}).status_code == 200
    page = client.get("/?token=s3cret")
    assert page.status_code == 200 and "<canvas" in page.text
    assert client.get("/api/config").status_code == 200  # the cookie the page set


def test_run_requests_are_checked() -> None:
    request = RunRequest.parse({"image": "uploads/x", "mode": "tau", "value": "0.5"}, "photos")
    assert (request.images, request.image, request.value) == ("uploads", "x", 0.5)
    with pytest.raises(kql.KryptonError, match="region is"):
        RunRequest.parse({"image": "a", "region": [1, 2, 3]}, "photos")
    with pytest.raises(kql.KryptonError, match="ssim target"):
        RunRequest.parse({"image": "a", "mode": "ssim", "value": 1}, "photos")


def test_a_segment_run_hides_each_superpixel(tmp_path) -> None:
    """``hide="segments"``: the painted map equals ``kql.ablation_scores`` on the same SLIC
    superpixels, the statement it shows computes the same map, downloads hold one row per
    segment, and requests that mix segments with patch-only choices are refused."""
    from krypton_ql import segments

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(rng.random((1, 3, 4, 4))),
                                             size=(32, 32), mode="bilinear")[0]  # fmt: skip
    Image.fromarray((smooth.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
        tmp_path / "c.png"
    )
    session = kql.connect()
    model = small_cnn()
    session.register_model("model", model, transform=_to_input, classes=["w", "x", "y", "z"])
    session.register_images("images", str(tmp_path))
    explorer = Explorer(session, "images", lambda image: image, ["model"])
    try:
        client = _client(explorer, raise_server_exceptions=False)
        run, events = _run(client, image="c", hide="segments", segments=12, color=0.5)
        kinds = [e["type"] for e in events]
        assert kinds[0] == "start" and kinds[-1] == "done" and "cells" in kinds, events[-1]
        start = events[0]
        painted = _received(events[:1] + [
            {**e, "index": list(range(32 * 32))} for e in events if e["type"] == "cells"
        ], 32, 32)  # fmt: skip
        image = explorer.image("c")
        labels = segments.segment(image, "slic", n_segments=12)
        assert start["positions"] == len(labels.unique()) > 3
        expected = kql.ablation_scores(model, image, labels, color=0.5, progress=False)
        np.testing.assert_allclose(painted, expected.maps(expected.scores)[0, 0, 0].numpy(),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        result = session.sql(start["sql"], progress=False)  # the statement the page shows
        np.testing.assert_allclose(result.heatmaps[0].numpy(), painted, rtol=1e-5, atol=1e-6)
        lines = client.get(f"/api/runs/{run}/heatmap.csv").text.strip().splitlines()
        assert lines[0] == "segment,area,prob,drop" and len(lines) == 1 + start["positions"]
        assert sum(int(line.split(",")[1]) for line in lines[1:]) == 32 * 32
        png = client.get(f"/api/runs/{run}/heatmap.png")
        assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert "regions in" in client.get(f"/api/runs/{run}/plan.txt").text
        assert client.get(f"/api/runs/{run}/plan.png").status_code == 400
        for options, message in (
            (dict(image="c", hide="segments", mode="tau", value=0.5), "exact mode"),
            (dict(image="c", hide="segments", region=[0, 0, 8, 8]), "whole photo"),
            (dict(image="c", hide="segments", segments=1), "between 2 and 2000"),
            (dict(image="c", hide="circles"), "hide must be one of"),
        ):
            response = client.post("/api/runs", json=options)
            assert response.status_code == 400 and message in response.json()["error"], options
    finally:
        explorer.close()


def test_an_ssim_target_streams_its_refinement_round_by_round(explorer) -> None:
    """With a profile whose planner picks coarse-to-fine refinement, a run puts each round's
    reconstruction (every cell, the estimate after the first check) and ends with the
    heatmap the plan computes, which meets the target against exact."""
    from tests.krypton_ql.test_refine import _profile

    explorer.session.model("model").profile = _profile()
    client = _client(explorer)
    run, events = _run(client, image="a", patch=4, stride=2, mode="ssim", value=0.9)
    cells = [e for e in events if e["type"] == "cells"]
    assert events[-1]["type"] == "done" and len(cells) >= 2
    rows, cols = events[0]["rows"], events[0]["cols"]
    assert all(len(e["index"]) == rows * cols for e in cells)  # whole reconstructions
    assert cells[0]["done"] < rows * cols and "ssim_estimate" in cells[-1]
    assert [e["stage"] for e in cells[:-1]] == sorted(e["stage"] for e in cells[:-1])
    model = explorer.session.model("model").get()
    plan = kql.compile(model, explorer.image("a").shape, patch=4, stride=2, ssim=0.9,
                       profile=_profile())  # fmt: skip
    assert "coarse-to-fine" in plan.explain()
    exact = kql.occlusion_heatmap(model, explorer.image("a"), patch=4, stride=2, progress=False)
    assert kql.quality.ssim(exact, _received(events, rows, cols)) >= 0.85
