"""``kql serve`` in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright
against the server started as a user starts it (``kql serve --port 0``, the built-in model and
photos). The heatmap values the page received equal ``kql.occlusion_heatmap`` on the region
drawn; the PNG downloads; a long run cancels; an error shows the CLI's message; a page closed
mid-stream leaves the server serving. Without Chromium the tests skip, except under ``.ci/run``
(``KQL_REQUIRE_BROWSER=1``), where they fail. ``KQL_SCREENSHOT=FILE`` keeps the screenshot
(the README's is made this way)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import krypton_ql as kql
from krypton_ql import models, segments

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # evil.example is a page elsewhere that the browser resolves to this machine (DNS rebinding)
    "--host-resolver-rules=MAP evil.example 127.0.0.1",
]

pytestmark = pytest.mark.slow

if CHROMIUM is None:
    if os.environ.get("KQL_REQUIRE_BROWSER") == "1":
        raise RuntimeError(
            "the browser tests need Debian's chromium (apt-get install chromium); .ci/run "
            "installs it"
        )
    pytest.skip("no chromium (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server():
    kql_command = Path(sys.executable).parent / "kql"
    process = subprocess.Popen(
        [str(kql_command), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = process.stdout.readline()  # "kql serve: open http://127.0.0.1:PORT/  (Ctrl-C stops)"
    if "open http" not in line:
        process.kill()
        raise AssertionError(f"kql serve did not start: {line!r} {process.stderr.read()}")
    url = line.split("open ")[1].split()[0]
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server, tmp_path):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server)
    page.wait_for_function("window.kql && window.kql.config && window.kql.imageSize")
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


def _wait_status(page, statuses: tuple[str, ...], timeout: float = 120_000) -> str:
    page.wait_for_function(f"{list(statuses)!r}.includes(window.kql.status)", timeout=timeout)
    return page.evaluate("window.kql.status")


def _drag(page, start: tuple[int, int], end: tuple[int, int]) -> None:
    """Drag on the photo from ``start`` to ``end`` (input pixels, (y, x))."""
    box = page.locator("#draw-canvas").bounding_box()
    scale = box["width"] / 224
    page.mouse.move(box["x"] + start[1] * scale, box["y"] + start[0] * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + end[1] * scale, box["y"] + end[0] * scale, steps=5)
    page.mouse.up()


def test_a_region_run_in_the_browser_equals_occlusion_heatmap(page, tmp_path) -> None:
    page.select_option("#photo", "chelsea")
    page.wait_for_function("document.querySelector('#target').options.length > 1")
    page.fill("#patch", "32")
    page.fill("#stride", "16")
    _drag(page, (40, 30), (170, 200))
    region = page.evaluate("window.kql.region")
    assert region == [40, 30, 170, 200]
    page.click("#run")
    assert _wait_status(page, ("done", "error")) == "done", page.inner_text("#error")
    rows, cols = page.evaluate("[window.kql.rows, window.kql.cols]")
    values = np.array(page.evaluate("Array.from(window.kql.values, v => isNaN(v) ? null : v)"),
                      dtype=float).reshape(rows, cols)  # fmt: skip
    image = models.preprocess(models.sample_photo("chelsea"))
    expected = kql.occlusion_heatmap(models.efficientnet_lite0(), image, patch=32, stride=16,
                                     progress=False).numpy()  # fmt: skip
    centres = np.arange(rows)[:, None] * 16 + 16, np.arange(cols)[None, :] * 16 + 16
    inside = ((centres[0] >= 40) & (centres[0] < 170)) & ((centres[1] >= 30) & (centres[1] < 200))
    assert np.array_equal(~np.isnan(values), inside)  # exactly the region's cells
    np.testing.assert_allclose(values[inside], expected[inside], rtol=1e-4, atol=1e-6)
    statement = page.inner_text("#statement")
    assert "FROM occlusion(photos, efficientnet_lite0, patch => 32, stride => 16)" in statement
    assert "y + 16 BETWEEN 40 AND 169" in statement
    with page.expect_download() as download:
        page.click("#dl-png")
    saved = tmp_path / "heatmap.png"
    download.value.save_as(saved)
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and saved.stat().st_size > 10_000
    page.wait_for_function("document.querySelector('#plan-picture').complete")
    assert page.evaluate("document.querySelector('#plan-picture').naturalWidth") > 500
    # hovering a computed cell shows its score and drop
    box = page.locator("#draw-canvas").bounding_box()
    page.mouse.move(box["x"] + 112 * box["width"] / 224, box["y"] + 112 * box["width"] / 224)
    tip = page.inner_text("#tooltip")
    assert "prob" in tip and "drop" in tip
    page.screenshot(
        path=os.environ.get("KQL_SCREENSHOT", str(tmp_path / "page.png")), full_page=True
    )


def test_cancel_stops_a_long_run(page) -> None:
    page.fill("#patch", "16")
    page.fill("#stride", "2")  # 105 × 105 positions: long on a CPU
    page.click("#run")
    page.wait_for_function("window.kql.computed && window.kql.computed.some(v => v)",
                           timeout=120_000)  # fmt: skip
    page.click("#cancel")
    assert _wait_status(page, ("cancelled", "done", "error")) == "cancelled"
    computed = page.evaluate("window.kql.computed.filter(v => v).length")
    assert 0 < computed < 105 * 105
    assert "Cancelled after" in page.inner_text("#status-text")


def test_an_error_shows_the_clis_message(page) -> None:
    page.fill("#patch", "0")
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    assert "patch" in page.inner_text("#error")
    assert page.evaluate("window.kql.status") != "running"


def test_sql_box_runs_a_statement(page) -> None:
    query = ("SELECT image, max(drop) AS top FROM occlusion(photos, model, patch => 112, "
             "stride => 112) WHERE image = 'coffee' GROUP BY image")  # fmt: skip
    page.fill("#sql", query)
    page.click("#run-sql")
    page.wait_for_selector("#sql-result table", timeout=120_000)
    assert "coffee" in page.inner_text("#sql-result")
    page.fill("#sql", "SELECT nope FROM occlusion(photos, model, patch => 112)")
    page.click("#run-sql")
    page.wait_for_selector("#sql-result .sql-error")
    assert "^" in page.inner_text("#sql-result")


ATTACK = """<!doctype html><title>elsewhere</title><script>
window.attack = async (url, query) => {
  const body = JSON.stringify({query});
  const outcome = {};
  try {  // a "simple" request: no preflight, the browser sends it as it is
    const answer = await fetch(url, {method: "POST", mode: "no-cors", body,
                                     headers: {"Content-Type": "text/plain"}});
    outcome.simple = answer.type;
  } catch (error) { outcome.simple = "failed"; }
  try {  // JSON needs the server's permission first, which it never gives
    const answer = await fetch(url, {method: "POST", body,
                                     headers: {"Content-Type": "application/json"}});
    outcome.json = answer.status;
  } catch (error) { outcome.json = "blocked"; }
  return outcome;
};
</script>"""


@pytest.fixture
def elsewhere():
    """The attacker's page, served from another origin (another port, and the name
    evil.example) on this machine, where a browser lets it send requests to loopback."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(ATTACK.encode())

        def log_message(self, *args) -> None:
            pass

    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    yield f"http://evil.example:{host.server_address[1]}/"
    host.shutdown()


def test_a_page_of_another_origin_cannot_run_sql(browser, server, elsewhere, tmp_path) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(elsewhere)
    target = tmp_path / "written.csv"
    query = f"COPY (SELECT 'x') TO '{target}'"
    with page.expect_response(f"{server}api/sql") as seen:
        outcome = page.evaluate("([url, query]) => attack(url, query)", [f"{server}api/sql", query])
    assert seen.value.status == 403  # the server refused the request it received
    assert outcome == {"simple": "opaque", "json": "blocked"}
    # A page that rebinds its own name to this machine reaches the server as same-origin: the
    # server refuses the name.
    port = server.rstrip("/").rsplit(":", 1)[1]
    rebound = page.goto(f"http://evil.example:{port}/")
    assert rebound is not None and rebound.status == 403
    status = page.evaluate(
        """(query) => fetch("/api/sql", {method: "POST", body: JSON.stringify({query}),
              headers: {"Content-Type": "application/json"}}).then((r) => r.status)""",
        query,
    )
    assert status == 403 and not target.exists()
    context.close()


def test_a_page_closed_mid_stream_leaves_the_server_serving(browser, server) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(server)
    page.wait_for_function("window.kql && window.kql.imageSize")
    page.fill("#stride", "2")
    page.click("#run")
    page.wait_for_function("window.kql.status === 'running' && window.kql.events > 0",
                           timeout=120_000)  # fmt: skip
    run = page.evaluate("window.kql.run")
    context.close()  # the event stream goes away mid-run
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(f"{server}api/runs/{run}", timeout=30) as response:
            state = json.loads(response.read())
        if state["finished"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert state["finished"] and state["cancelled"]  # the server stopped the orphaned run
    with urllib.request.urlopen(server + "api/config", timeout=30) as response:
        assert response.status == 200 and b"chelsea" in response.read()


def test_a_segment_run_in_the_browser_equals_ablation_scores(page, tmp_path) -> None:
    page.select_option("#photo", "coffee")
    page.wait_for_function("document.querySelector('#target').options.length > 1")
    page.check("input[name=hide][value=segments]")
    assert page.is_disabled("#patch") and page.is_disabled("input[name=mode][value=tau]")
    page.fill("#segments", "30")
    page.click("#run")
    assert _wait_status(page, ("done", "error")) == "done", page.inner_text("#error")
    rows, cols = page.evaluate("[window.kql.rows, window.kql.cols]")
    values = np.array(page.evaluate("Array.from(window.kql.values, v => isNaN(v) ? null : v)"),
                      dtype=float).reshape(rows, cols)  # fmt: skip
    image = models.preprocess(models.sample_photo("coffee"))
    labels = segments.segment(image, "slic", n_segments=30)
    expected = kql.ablation_scores(models.efficientnet_lite0(), image, labels, progress=False)
    np.testing.assert_allclose(values, expected.maps(expected.scores)[0, 0, 0].numpy(),
                               rtol=1e-4, atol=1e-6)  # fmt: skip
    assert "segments => 'slic', n_segments => 30" in page.inner_text("#statement")
    box = page.locator("#draw-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert "superpixel hidden" in page.inner_text("#tooltip")
    with page.expect_download() as download:
        page.click("#dl-png")
    saved = tmp_path / "segments.png"
    download.value.save_as(saved)
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and saved.stat().st_size > 10_000
    page.click("#plan-details summary")
    page.wait_for_function("document.querySelector('#plan-text').textContent.length > 0")
    assert "regions in" in page.inner_text("#plan-text")
