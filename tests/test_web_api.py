"""`fruits serve`'s API without Spark or a model: uploads of real photos through the same code as `fruits drop`, each
error code (401, 413, 415, 422), traversal attempts, the token, CORS, and /api/status (httpx test client)."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import make_config, shipped_photos
from fruits.cli import build_parser, config_from_args
from fruits.config import load_config
from fruits.landing.drop import drop
from fruits.home.names import UnsafeName
from fruits.web.app import create_app

pytestmark = pytest.mark.fast  # no Spark, no TensorFlow, no ../shared (make test-fast)

# The Host a server without a token accepts (loopback: fruits.web.door), as a local browser sends it.
LOOPBACK = "http://127.0.0.1:8000"
FRUITS = str(Path(sys.executable).with_name("fruits"))
BANANA = shipped_photos("Banana", 2)
STRAWBERRY = shipped_photos("Strawberry", 1)[0]


def client_for(home: Path, **web) -> TestClient:
    """A test client of the app for ``home`` (no weights: identify is off), with ``[web]`` settings."""
    sections = {"web": web} if web else {}
    return TestClient(create_app(make_config(home, **sections), None, warm=False), base_url=LOOPBACK)


def upload(path: Path, name: str | None = None, data: bytes | None = None) -> tuple:
    return ("file", (name or path.name, data if data is not None else path.read_bytes(), "application/octet-stream"))


def landed(home: Path) -> list[str]:
    """Every file under the landing folder (hidden ones included), relative to it."""
    root = home / "landing"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_upload_lands_real_photos_under_their_label_like_fruits_drop(tmp_path):
    client = client_for(tmp_path)
    response = client.post("/api/photos", files=[upload(BANANA[0]), upload(BANANA[1])], data={"label": "Banana"})
    assert response.status_code == 202
    photos = response.json()["photos"]
    assert photos == [
        {"name": p.name, "path": f"Banana/{p.name}", "label": "Banana", "note": "placed"} for p in BANANA
    ]
    for photo in BANANA:
        assert (tmp_path / "landing" / "Banana" / photo.name).read_bytes() == photo.read_bytes()
    assert landed(tmp_path) == sorted(f"Banana/{p.name}" for p in BANANA)  # no temporary file left behind
    # Without a label: the landing root, as `fruits drop FILE` does.
    response = client.post("/api/photos", files=[upload(STRAWBERRY)])
    assert response.status_code == 202 and response.json()["photos"][0] == {
        "name": STRAWBERRY.name, "path": STRAWBERRY.name, "label": None, "note": "placed"
    }


def test_upload_never_overwrites(tmp_path):
    client = client_for(tmp_path)
    first = client.post("/api/photos", files=[upload(BANANA[0], "same.jpg")], data={"label": "Banana"})
    assert first.json()["photos"][0]["path"] == "Banana/same.jpg"
    other = client.post("/api/photos", files=[upload(BANANA[1], "same.jpg")], data={"label": "Banana"})
    assert other.status_code == 202 and other.json()["photos"][0]["path"] == "Banana/same-2.jpg"
    again = client.post("/api/photos", files=[upload(BANANA[0], "same.jpg")], data={"label": "Banana"})
    assert again.status_code == 202 and again.json()["photos"][0] == {
        "name": "same.jpg", "path": None, "label": "Banana", "note": "already there"
    }
    assert (tmp_path / "landing" / "Banana" / "same.jpg").read_bytes() == BANANA[0].read_bytes()
    assert (tmp_path / "landing" / "Banana" / "same-2.jpg").read_bytes() == BANANA[1].read_bytes()
    assert landed(tmp_path) == ["Banana/same-2.jpg", "Banana/same.jpg"]


def test_the_format_comes_from_the_bytes_not_the_name(tmp_path):
    client = client_for(tmp_path)
    import pillow_heif

    pillow_heif.register_heif_opener()
    png, heic = io.BytesIO(), io.BytesIO()
    Image.open(BANANA[0]).save(png, format="PNG")
    Image.open(BANANA[1]).save(heic, format="HEIF")  # what an iPhone sends
    response = client.post(
        "/api/photos",
        files=[upload(BANANA[0], "from the camera"), upload(BANANA[0], "picture.png", png.getvalue()),
               upload(BANANA[1], ".hidden.txt"), upload(BANANA[1], "IMG_0001", heic.getvalue())],
    )
    assert response.status_code == 202
    # A name the stream would not read gets the extension of the real format; hidden prefixes are dropped.
    assert [p["path"] for p in response.json()["photos"]] == [
        "from the camera.jpg", "picture.png", "hidden.txt.jpg", "IMG_0001.heic"
    ]
    assert (tmp_path / "landing" / "IMG_0001.heic").read_bytes() == heic.getvalue()


def test_heif_magic_bytes_are_accepted():
    from fruits.model.images import sniff_format

    assert sniff_format(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00") == "heic"
    assert sniff_format(b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00") == "heic"
    assert sniff_format(b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00") is None  # an MP4 video
    assert sniff_format(BANANA[0].read_bytes()[:16]) == "jpg"


@pytest.mark.parametrize(
    "name,data",
    [("fake.jpg", b"this is text, not a photo"), ("video.heic", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64), ("empty.png", b"")],
)
def test_415_for_bytes_that_are_not_an_image_the_stream_reads(tmp_path, name, data):
    client = client_for(tmp_path)
    response = client.post("/api/photos", files=[upload(BANANA[0]), upload(BANANA[0], name, data)], data={"label": "Banana"})
    assert response.status_code == 415 and name in response.json()["detail"]
    assert landed(tmp_path) == []  # one refused photo: none of the request lands


def test_413_above_the_per_photo_cap_and_the_request_cap(tmp_path):
    size = BANANA[0].stat().st_size
    capped = TestClient(create_app(make_config(tmp_path, model={"max_bytes": size - 1}), None, warm=False), base_url=LOOPBACK)
    response = capped.post("/api/photos", files=[upload(BANANA[0])])
    assert response.status_code == 413 and f"above the cap of {size - 1}" in response.json()["detail"]

    small = client_for(tmp_path, max_request_bytes=3 * size)
    response = small.post("/api/photos", files=[upload(BANANA[0], f"{i}.jpg") for i in range(4)])
    assert response.status_code == 413  # by its Content-Length

    def chunks():  # no Content-Length: counted while it streams in
        for _ in range(8):
            yield b"x" * size

    response = small.post("/api/photos", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413

    few = client_for(tmp_path, max_files=2)
    assert few.post("/api/photos", files=[upload(BANANA[0], f"{i}.jpg") for i in range(3)]).status_code == 413
    assert landed(tmp_path) == []


BAD_LABELS = ["..", ".", "a/b", "/etc", "../../outside", "..\\outside", ".hidden", "_spark_metadata", "~tmp", " Banana"]


@pytest.mark.parametrize("label", BAD_LABELS)
def test_422_for_a_bad_label_the_same_rule_as_fruits_drop(tmp_path, label):
    response = client_for(tmp_path).post("/api/photos", files=[upload(BANANA[0])], data={"label": label})
    assert response.status_code == 422
    assert response.json()["detail"].startswith(("label ", "the label ")), "the form's field, not the CLI's --label"
    assert not (tmp_path / "landing").exists() or landed(tmp_path) == []
    with pytest.raises(UnsafeName):
        drop([BANANA[0]], tmp_path / "landing", ["jpg"], label=label)
    assert not (tmp_path / "outside").exists()


def test_fruits_drop_refuses_a_bad_label_too(tmp_path):
    result = subprocess.run(
        [FRUITS, "drop", "--home", str(tmp_path), "--label", "../x", str(BANANA[0])], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "fruits drop: error: label '../x': a label is one folder name" in result.stderr
    assert not (tmp_path / "x").exists() and landed(tmp_path) == []


def test_a_client_file_name_cannot_leave_the_landing_folder(tmp_path):
    client = client_for(tmp_path)
    names = ["../../../evil.jpg", "..\\..\\evil2.jpg", "/etc/evil3.jpg", "Banana/../../evil4.jpg"]
    response = client.post("/api/photos", files=[upload(BANANA[0], name) for name in names], data={"label": "Fig"})
    assert response.status_code == 202
    assert [p["path"] for p in response.json()["photos"]] == ["Fig/evil.jpg", "Fig/evil2.jpg", "Fig/evil3.jpg", "Fig/evil4.jpg"]
    assert landed(tmp_path) == ["Fig/evil.jpg", "Fig/evil2.jpg", "Fig/evil3.jpg", "Fig/evil4.jpg"]
    assert [p for p in tmp_path.rglob("evil*") if p.parent != tmp_path / "landing" / "Fig"] == []


def test_thumbnails_only_for_photos_inside_the_landing_folder(tmp_path):
    client = client_for(tmp_path)
    client.post("/api/photos", files=[upload(BANANA[0])], data={"label": "Banana"})
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(BANANA[1].read_bytes())
    (tmp_path / "landing" / "Banana" / "link.jpg").symlink_to(secret)  # a symlink out of the landing folder
    (tmp_path / "landing" / "Banana" / "notes.txt").write_text("not an image")
    (tmp_path / "landing" / "Banana" / ".hidden.jpg").write_bytes(BANANA[1].read_bytes())

    ok = client.get(f"/thumbs/landing/Banana/{BANANA[0].name}")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(ok.content)).size) <= 160
    for url in [
        "/thumbs/landing/..%2Fsecret.jpg",
        "/thumbs/landing/%2e%2e/secret.jpg",
        "/thumbs/landing/Banana/%2e%2e/%2e%2e/secret.jpg",
        "/thumbs/landing/%2Fetc%2Fpasswd",
        "/thumbs/landing//etc/passwd",
        "/thumbs/landing/Banana/link.jpg",
        "/thumbs/landing/Banana/notes.txt",
        "/thumbs/landing/Banana/.hidden.jpg",
        "/thumbs/archive/Banana/x.jpg",  # no archive configured
        "/thumbs/tables/features/_delta_log/00000000000000000000.json",
        "/pca/v1/..%2F..%2Flanding%2FBanana%2Fx.png",
        "/pca/v1/metadata.json",
        "/static/..%2F..%2Fconfig.py",
    ]:
        assert client.get(url).status_code == 404, url
    # Raw `..` segments, as a hostile client sends them (httpx itself would normalise them away).
    raw = client.build_request("GET", f"{LOOPBACK}/thumbs/landing/x")
    raw.url = raw.url.copy_with(raw_path=b"/thumbs/landing/../../secret.jpg")
    assert client.send(raw).status_code == 404


BEARER = {"Authorization": "Bearer s3cret"}


def test_with_a_token_every_endpoint_needs_it_but_the_page_its_static_files_and_the_health_check(tmp_path):
    client = client_for(tmp_path, token="s3cret")
    files = [upload(BANANA[0])]
    assert client.post("/api/photos", files=files).status_code == 401
    assert client.post("/api/photos", files=files, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/api/photos", files=files, headers={"Authorization": "Basic s3cret"}).status_code == 401
    assert client.post("/api/identify", files=files).status_code == 401
    assert landed(tmp_path) == []
    assert client.post("/api/photos", files=files, data={"label": "Banana"}, headers=BEARER).status_code == 202
    thumbnail = f"/thumbs/landing/Banana/{BANANA[0].name}"
    for path in ("/api/status", "/api/dashboard", "/api/config", thumbnail, "/pca/v1/variance.png", "/docs",
                 "/openapi.json", "/api/nothing"):
        refused = client.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
        assert tmp_path.name not in refused.text, path  # nothing of the home in a refusal
    assert client.get("/api/status", headers=BEARER).json()["home"] == str(tmp_path)
    assert client.get("/api/config", headers=BEARER).json()["token_required"] is True
    assert client.get(thumbnail, headers=BEARER).status_code == 200  # a client that can send the header
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    for raw_path in (b"/static/../api/status", b"/static/%2e%2e/api/status", b"//api/status", b"/api/status/"):
        raw = client.build_request("GET", f"{LOOPBACK}/x")
        raw.url = raw.url.copy_with(raw_path=raw_path)
        sneaked = client.send(raw)  # the public prefix does not open the API
        assert sneaked.status_code in (401, 404) and tmp_path.name not in sneaked.text, raw_path


def test_thumbnails_and_plots_by_short_lived_signed_urls_the_api_hands_out(tmp_path):
    from fruits.web.door import UrlSigner

    client = client_for(tmp_path, token="s3cret", signed_url_seconds="10m")
    client.post("/api/photos", files=[upload(BANANA[0])], data={"label": "Banana"}, headers=BEARER)
    service = client.app.state.service
    url = service.files.thumbnail_url(str(tmp_path / "landing" / "Banana" / BANANA[0].name))
    assert url.startswith(f"/thumbs/landing/Banana/{BANANA[0].name}?exp=")
    shown = client.get(url)  # as an <img> asks: no header
    assert shown.status_code == 200 and Image.open(io.BytesIO(shown.content)).format == "JPEG"
    path, query = url.split("?")
    assert client.get(path).status_code == 401
    assert client.get(url.replace("sig=", "sig=0")).status_code == 401
    other = shipped_photos("Banana", 3)[2]
    client.post("/api/photos", files=[upload(other)], data={"label": "Banana"}, headers=BEARER)
    assert client.get(f"/thumbs/landing/Banana/{other.name}?{query}").status_code == 401  # for that path only
    assert client.post(url, files=[upload(BANANA[0])]).status_code in (401, 405)  # a signature is for GET only
    expired = service.signer.sign(f"/thumbs/landing/Banana/{BANANA[0].name}", now=time.time() - 3600)
    assert client.get(expired).status_code == 401
    elsewhere = UrlSigner(600).sign(f"/thumbs/landing/Banana/{BANANA[0].name}")  # another process's key
    assert client.get(elsewhere).status_code == 401
    plot = service.files.plot_url(1, "variance.png")
    assert plot.startswith("/pca/v1/variance.png?exp=") and client.get(plot).status_code == 404  # signed; no PCA yet


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:8000.evil.example",
                                    "https://app.example.evil"])
def test_a_post_from_another_sites_page_is_refused_before_anything_lands(tmp_path, origin):
    client = client_for(tmp_path, cors_origins=["https://app.example"])
    response = client.post("/api/photos", files=[upload(BANANA[0])], data={"label": "Poison"}, headers={"Origin": origin})
    assert response.status_code == 403 and landed(tmp_path) == []
    assert client.post("/api/identify", files=[upload(BANANA[0])], headers={"Origin": origin}).status_code == 403
    sneaky = client.post("/api/photos", files=[upload(BANANA[0])], headers={"Sec-Fetch-Site": "cross-site"})
    assert sneaky.status_code == 403 and landed(tmp_path) == []
    # The server's own page (same Host), an allowed origin, and clients that send no Origin (curl) land.
    for headers in ({"Origin": LOOPBACK}, {"Origin": "https://app.example"}, {}):
        assert client.post("/api/photos", files=[upload(BANANA[0])], headers=headers).status_code == 202, headers


def test_behind_a_proxy_the_configured_public_origin_is_the_servers_own(tmp_path):
    client = client_for(tmp_path, token="s3cret", public_origin="https://fruits.example.com")
    headers = {**BEARER, "Origin": "https://fruits.example.com", "Host": "backend:8000"}
    assert client.post("/api/photos", files=[upload(BANANA[0])], headers=headers).status_code == 202
    headers["Origin"] = "https://evil.example"
    assert client.post("/api/photos", files=[upload(BANANA[0])], headers=headers).status_code == 403


def test_without_a_token_only_a_loopback_host_is_served_against_dns_rebinding(tmp_path):
    client = client_for(tmp_path)
    # A page of evil.example whose name now resolves to 127.0.0.1: same origin for the browser, not for the server.
    rebound = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
    assert client.get("/api/status", headers={"Host": "evil.example:8000"}).status_code == 403
    assert client.post("/api/photos", files=[upload(BANANA[0])], headers=rebound).status_code == 403
    assert landed(tmp_path) == []
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert client.get("/api/status", headers={"Host": host}).status_code == 200, host
    with_token = client_for(tmp_path, token="s3cret")  # a token protects whatever the Host
    assert with_token.get("/api/status", headers={**BEARER, "Host": "fruits.lan:8000"}).status_code == 200


def test_serve_refuses_a_non_loopback_address_without_a_token_unless_told(tmp_path):
    from fruits.config import ConfigError
    from fruits.web.door import check_exposure

    result = subprocess.run([FRUITS, "serve", "--home", str(tmp_path), "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "no token set" in result.stderr and "--allow-no-token" in result.stderr
    web = make_config(tmp_path).web
    for host in ("0.0.0.0", "::", "192.168.1.10", "fruits.lan"):
        with pytest.raises(ConfigError):
            check_exposure(web, host)
    for host in ("127.0.0.1", "localhost", "::1"):
        check_exposure(web, host)
    check_exposure(make_config(tmp_path, web={"token": "t"}).web, "0.0.0.0")
    flags = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--allow-no-token"])
    check_exposure(config_from_args(flags).web, "0.0.0.0")  # explicitly intended


def test_token_from_the_flag_or_fruits_token_and_safe_defaults(tmp_path):
    defaults = config_from_args(build_parser().parse_args(["serve", "--home", str(tmp_path)]))
    web = defaults.web
    assert web.host == "127.0.0.1" and web.port == 8000 and web.cors_origins == ()
    assert load_config(environ={}).web.token == ""
    assert load_config(environ={"FRUITS_TOKEN": "t0k"}).web.token == "t0k"
    flags = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "9000", "--token", "abc"])
    assert {k: getattr(config_from_args(flags).web, k) for k in ("host", "port", "token")} == {
        "host": "0.0.0.0", "port": 9000, "token": "abc"
    }


def test_cors_allow_list_is_empty_by_default(tmp_path):
    origin = {"Origin": "https://evil.example"}
    closed = client_for(tmp_path)
    assert "access-control-allow-origin" not in closed.get("/api/status", headers=origin).headers
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in closed.options("/api/photos", headers=preflight).headers

    opened = client_for(tmp_path, cors_origins=["https://app.example"])
    allowed = opened.get("/api/status", headers={"Origin": "https://app.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in opened.get("/api/status", headers=origin).headers


def test_status_is_the_fruits_status_json_object_and_the_page_is_served(tmp_path):
    from fruits.home.home import Home
    from fruits.reports.status import collect_status

    client = client_for(tmp_path)
    client.post("/api/photos", files=[upload(BANANA[0])], data={"label": "Banana"})
    served, printed = client.get("/api/status").json(), collect_status(Home.from_config(make_config(tmp_path)))
    for report in (served, printed):  # measured a few ms apart: the age is the only field that may differ
        assert report["backlog"].pop("oldest_pending_age_seconds") >= 0
    assert served == printed
    page = client.get("/")
    assert page.status_code == 200 and 'capture="environment"' in page.text and 'accept="image/*"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    dashboard = client.get("/api/dashboard").json()
    assert {"status", "throughput", "batches", "quarantine_reasons", "pca", "backlog"} <= set(dashboard)
    assert client.post("/api/identify", files=[upload(BANANA[0])]).status_code == 503  # started without weights


def test_images_per_second_come_from_the_streams_cumulative_counter(tmp_path):
    """Samples of HOME/status/stream-progress.json: the rate counts every file between two samples, even of
    micro-batches the sampler never saw, and a restarted stream (counter back down) does not go negative."""
    import json

    from fruits.web.dashboard import ProgressSampler

    config = make_config(tmp_path)
    progress = tmp_path / "status" / "stream-progress.json"
    progress.parent.mkdir()
    sampler = ProgressSampler(config, window_seconds=600, sample_seconds=1)

    def write(batch: int, files: int, since_start: int) -> None:
        figures = {"batch": batch, "files": files, "seconds": 1.0, "images_per_s": files, "files_since_start": since_start,
                   "at": f"2026-12-03T09:00:{batch:02d}.000Z"}
        progress.write_text(json.dumps(figures))

    t0 = 1_000_000.0  # a multiple of the 5 s buckets
    sampler.sample(now=t0)  # no file yet
    write(0, 10, 10)
    sampler.sample(now=t0 + 1)
    write(2, 30, 100)  # batch 1 (60 files) was never sampled
    sampler.sample(now=t0 + 6)
    write(0, 7, 7)  # the stream restarted: its counter starts again
    sampler.sample(now=t0 + 11)
    rates = sampler.rates(bucket_seconds=5, now=t0 + 15)
    assert [r["images_per_s"] for r in rates] == [10 / 5, 90 / 5, 7 / 5, 0.0]
    assert [b["batch"] for b in sampler.batches] == [0, 2, 0]
    assert client_for(tmp_path).get("/api/config").json()["refresh_seconds"] <= 2


def test_501_for_uploads_to_a_landing_folder_neither_local_nor_on_s3(tmp_path):
    config = make_config(tmp_path, paths={"landing": "hdfs://namenode/fruits/landing"})
    client = TestClient(create_app(config, None, warm=False), base_url=LOOPBACK)
    response = client.post("/api/photos", files=[upload(BANANA[0])])
    assert response.status_code == 501 and "fruits drop" in response.json()["detail"]
    assert client.get("/api/config").json()["uploads"] is False


def test_the_dashboard_computes_the_status_again_only_when_the_home_changed(tmp_path):
    """Many polls of an idle home cost one computation (it reads whole columns); the ages still move on; a change
    (an upload, recorded in the file ledger) is in the next answer."""
    client = client_for(tmp_path, refresh_seconds=0.2)
    dashboard = client.app.state.service.dashboard
    client.post("/api/photos", files=[upload(BANANA[0])], data={"label": "Banana"})
    time.sleep(0.15)
    first = client.get("/api/dashboard").json()["status"]
    computed = dashboard.computations
    for _ in range(6):
        time.sleep(0.12)
        client.get("/api/dashboard")
    assert dashboard.computations == computed
    later = client.get("/api/status").json()
    assert later["backlog"]["pending"] == first["backlog"]["pending"] == 1
    assert later["backlog"]["oldest_pending_age_seconds"] >= first["backlog"]["oldest_pending_age_seconds"] + 0.5
    client.post("/api/photos", files=[upload(BANANA[1])], data={"label": "Banana"})
    time.sleep(0.12)
    assert client.get("/api/status").json()["backlog"]["pending"] == 2
    assert dashboard.computations == computed + 1


def test_identify_runs_on_a_bounded_pool_of_lower_priority_threads(tmp_path):
    import os
    import threading

    client = client_for(tmp_path, identify_workers=3, identify_nice=7, identify_cpu_share=0.3)
    pool = client.app.state.service.identify_pool
    assert client.app.state.service.identify_share.share == 0.3  # [web] identify_cpu_share bounds the pool's CPU
    assert client_for(tmp_path / "unbounded", identify_cpu_share=0).app.state.service.identify_share is None
    base = os.getpriority(os.PRIO_PROCESS, 0)

    def who() -> tuple[str, int, int]:
        time.sleep(0.2)  # all at once: the pool has to start every thread it may
        child: list[int] = []
        thread = threading.Thread(target=lambda: child.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        thread.start()
        thread.join()
        return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), child[0]

    answers = [future.result() for future in [pool.submit(who) for _ in range(9)]]
    assert len({name for name, _, _ in answers}) == 3  # never more threads than [web] identify_workers
    assert {(nice, child) for _, nice, child in answers} == {(min(base + 7, 19), min(base + 7, 19))}
