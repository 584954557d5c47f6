"""`fruits serve` end to end: identify over a home the real stream and refit built, a new PCA version without a
restart, the page in a real browser (Playwright driving Chromium), and the dashboard while a real `fruits stream` runs."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import NOTOP_WEIGHTS, ROOT, make_config, place, sample_files, serving

pytestmark = pytest.mark.slow

# The Host a server without a token accepts (loopback: fruits.web.door), as a local browser sends it.
LOOPBACK = "http://127.0.0.1:8000"
SCREENSHOT = ROOT / "docs" / "web.png"


def wait_rows(table: str, rows: int, timeout: float) -> float:
    """Poll a Delta table (deltalake) until it holds ``rows`` rows; returns time.monotonic() then."""
    from deltalake import DeltaTable

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = DeltaTable(table) if DeltaTable.is_deltatable(table) else None
        if found is not None and found.to_pyarrow_dataset().count_rows() >= rows:
            return time.monotonic()
        time.sleep(0.1)
    pytest.fail(f"{table} did not reach {rows} rows in {timeout} s")


def photo_file(path: Path) -> list[tuple]:
    return [("file", (path.name, path.read_bytes(), "image/jpeg"))]


@pytest.fixture(scope="module")
def client(identify_home, weights):
    """One app (one model) for the module's API tests, as one server process would be."""
    from fruits.web.app import create_app

    with TestClient(create_app(identify_home["config"], weights), base_url=LOOPBACK) as client:
        yield client


def test_identify_answers_the_object_of_fruits_identify_json_with_thumbnails(identify_home, weights, client):
    from fruits.model.identify import identify

    config = identify_home["config"]
    photos = [identify_home["held_out"][label] for label in ("Banana", "Lemon", "Kiwi")]
    expected = identify(photos, config, weights)
    for photo, cli in zip(photos, expected):
        response = client.post("/api/identify", files=photo_file(photo))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["predicted"] == photo.parent.name == cli["predicted"]
        assert answer["photo"] == photo.name
        assert answer["confidence"] == cli["confidence"] and answer["pca_version"] == cli["pca_version"] == 1
        assert [{k: n[k] for k in ("label", "distance")} for n in answer["neighbors"]] == cli["neighbors"]
        assert len(answer["neighbors"]) == 5
        for neighbour in answer["neighbors"]:
            assert neighbour["thumbnail"].startswith("/thumbs/archive/")  # the photos were archived once ingested
            thumb = client.get(neighbour["thumbnail"])
            assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"


def test_status_is_what_fruits_status_json_prints(identify_home, client):
    import json

    def without_ages(report: dict) -> dict:
        for section in ("last_refit", "stream"):
            if report.get(section):
                report[section].pop("age_seconds")
        return report

    result = subprocess.run(
        [sys.executable, "-m", "fruits.cli", "status", "--home", identify_home["config"].home, "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert without_ages(client.get("/api/status").json()) == without_ages(json.loads(result.stdout))


def test_identify_error_codes(identify_home, client, tmp_path):
    from fruits.web.app import create_app

    banana = identify_home["held_out"]["Banana"]
    text = client.post("/api/identify", files=[("file", ("banana.jpg", b"plain text, not a photo", "image/jpeg"))])
    assert text.status_code == 415
    truncated = client.post("/api/identify", files=[("file", ("cut.jpg", banana.read_bytes()[:300], "image/jpeg"))])
    assert truncated.status_code == 422 and "cut.jpg" in truncated.json()["detail"]
    capped_config = make_config(identify_home["config"].home, model={"max_bytes": 100})
    capped = TestClient(create_app(capped_config, None, warm=False), base_url=LOOPBACK)
    assert capped.post("/api/identify", files=photo_file(banana)).status_code == 413
    empty_home = TestClient(create_app(make_config(tmp_path), None, warm=False), base_url=LOOPBACK)
    assert empty_home.post("/api/identify", files=photo_file(banana)).status_code == 503


def test_a_new_pca_version_is_picked_up_without_a_restart(spark, weights, identify_home, client):
    from fruits.batch.refit_pca import refit_pca
    from fruits.streaming.ingest import run_stream

    config = identify_home["config"]
    mango = sample_files("Mango")
    assert client.post("/api/identify", files=photo_file(mango[-1])).json()["pca_version"] == 1
    model = client.app.state.service.identifier().featurizer()[1]
    place(mango[:-1], Path(config.home) / "landing" / "Mango")  # a class the server has never seen
    run_stream(spark, config, weights, available_now=True)
    assert refit_pca(spark, config, k=20).refitted.version == 2
    answer = client.post("/api/identify", files=photo_file(mango[-1])).json()
    assert answer["pca_version"] == 2 and answer["predicted"] == "Mango"
    assert client.app.state.service.identifier().featurizer()[1] is model  # the same model: loaded once per process


def test_the_page_identifies_a_real_photo_in_a_real_browser(identify_home, weights, page):
    """With a token set: the page asks for it once, then every call carries it and the images (neighbours' thumbnails,
    PCA plots) load from the signed URLs the API handed out."""
    from dataclasses import replace

    from playwright.sync_api import expect

    from fruits.web.app import create_app

    config = replace(identify_home["config"], web=replace(identify_home["config"].web, token="page-token"))
    auth = {"Authorization": "Bearer page-token"}
    photo = identify_home["held_out"]["Strawberry"]
    with serving(create_app(config, weights)) as url:
        page.goto(url)
        expect(page.locator("#token-box")).to_be_visible(timeout=10_000)
        expect(page.locator("#count-features")).to_have_text("–")  # nothing shown without the token
        page.fill("#token", "page-token")
        page.press("#token", "Enter")
        expect(page.locator("#count-features")).not_to_have_text("–", timeout=10_000)  # the dashboard filled in
        page.set_input_files("#photo", str(photo))  # choosing a photo identifies it
        expect(page.locator("#predicted")).to_have_text("Strawberry", timeout=60_000)
        expect(page.locator("#confidence")).to_contain_text("%")
        thumbnails = page.locator("#neighbors img")
        expect(thumbnails).to_have_count(5)
        page.wait_for_function(
            "[...document.querySelectorAll('#neighbors img')].every(i => i.complete && i.naturalWidth > 0)", timeout=10_000
        )
        expect(page.locator("#plots img")).to_have_count(2)
        page.wait_for_function(
            "[...document.querySelectorAll('#plots img')].every(i => i.complete && i.naturalWidth > 0)", timeout=10_000
        )
        assert all("?exp=" in page.locator("#neighbors img").nth(i).get_attribute("src") for i in range(5))
        rows = httpx.get(f"{url}/api/status", headers=auth).json()["features"]["rows"]
        expect(page.locator("#count-features")).to_have_text(str(rows))
        labels = httpx.get(f"{url}/api/status", headers=auth).json()["features"]["labels"]
        assert page.locator("#labels tbody tr").count() == len(labels)
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # "Add" lands the photo under the label shown (the predicted one), through POST /api/photos.
        expect(page.locator("#add-label")).to_have_value("Strawberry")
        page.click("#add-form button")
        expect(page.locator("#add-result")).to_have_text(f"added as Strawberry/{photo.name}")
        assert (Path(config.landing) / "Strawberry" / photo.name).read_bytes() == photo.read_bytes()

        # The backlog, once the status report has one (its key is {pending, oldest_pending_age_seconds}).
        def with_backlog(route):
            answer = route.fetch()
            route.fulfill(response=answer, json={**answer.json(), "backlog": {"pending": 7, "oldest_pending_age_seconds": 42}})

        page.route("**/api/dashboard", with_backlog)
        expect(page.locator("#count-backlog")).to_have_text("7", timeout=10_000)
        expect(page.locator("#count-oldest")).to_have_text("42 s")


def test_dashboard_counters_rise_within_seconds_while_a_real_stream_runs(identify_home, tmp_path, page):
    """A real `fruits stream` subprocess and the server share a home; photos uploaded through the API reach the
    features table (the stream's micro-batch), then the page's counters within 4 s of that commit."""
    from playwright.sync_api import expect

    from fruits.web.app import create_app

    home = tmp_path / "home"  # the OpenVINO IR converted for identify_home is reused: the IR cache is per user
    config = make_config(home)
    log = (tmp_path / "stream.log").open("w")
    stream = subprocess.Popen(
        [sys.executable, "-m", "fruits.cli", "stream", "--home", str(home),
         "--weights", str(NOTOP_WEIGHTS), "--master", "local[2]", "--trigger", "1s"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        with serving(create_app(config, None, warm=False)) as url:
            page.goto(url)
            counter = page.locator("#count-features")
            expect(counter).to_have_text("0", timeout=10_000)
            upload = lambda photos, label: httpx.post(  # noqa: E731
                f"{url}/api/photos", files=[("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos],
                data={"label": label}, timeout=30,
            )
            assert upload(sample_files("Kiwi", 1), "Kiwi").status_code == 202  # read once the stream is up
            expect(counter).to_have_text("1", timeout=240_000)

            photos = sample_files("Lemon", 5)
            started = time.monotonic()
            assert upload(photos, "Lemon").status_code == 202
            committed = wait_rows(config.features_table, 6, timeout=60) - started  # the stream's part
            expect(counter).to_have_text("6", timeout=10_000)
            shown = time.monotonic() - started
            print(f"5 uploaded photos: in the features table after {committed:.1f} s, on the dashboard after {shown:.1f} s")
            assert shown - committed <= 4.0  # the dashboard's part: its next poll (1.5 s) + the status cache
            expect(page.locator("#labels tbody tr")).to_have_count(2)
            expect(page.locator("#batches tbody tr").first).to_be_visible()
            truncated = httpx.post(
                f"{url}/api/photos", files=[("file", ("cut.jpg", photos[0].read_bytes()[:300], "image/jpeg"))], timeout=30
            )
            assert truncated.status_code == 202  # JPEG magic bytes: accepted; the stream quarantines what it cannot decode
            expect(page.locator("#count-quarantine")).to_have_text("1", timeout=60_000)
            expect(page.locator("#reasons tbody tr")).to_have_count(1)
            expect(page.locator("#reasons tbody tr td").last).to_have_text("1")
            dashboard = httpx.get(f"{url}/api/dashboard").json()
            assert any(point["images_per_s"] > 0 for point in dashboard["throughput"]), dashboard["throughput"]
            assert dashboard["batches"][0]["files"] >= 1
    finally:
        stream.send_signal(signal.SIGTERM)
        try:
            stream.wait(120)
        except subprocess.TimeoutExpired:
            stream.kill()
        log.close()
