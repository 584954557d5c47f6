"""`fruits serve`'s front door on a real server (uvicorn on a loopback port), spoken to over raw sockets: what it
answers from the headers alone, before a body it was announced has arrived; slow senders; the bound on requests in
flight; and the server's own peak memory when it is sent a small PNG bomb."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest

from conftest import make_config, serving, shipped_photos
from fruits.web.app import create_app

pytestmark = pytest.mark.fast  # no Spark, no TensorFlow, no ../shared

FRUITS = str(Path(sys.executable).with_name("fruits"))
TOKEN = "s3cret-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def served(home: Path, **web):
    """The app of ``home`` (``[web]`` settings ``web``) under a real uvicorn on a free loopback port; yields the port."""
    with serving(create_app(make_config(home, web=web), None, warm=False)) as url:
        yield int(url.rsplit(":", 1)[1])


def request_head(port: int, method: str, path: str, length: int | None, token: str | None = None, **headers) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: multipart/form-data; boundary=b"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(sock: socket.socket, timeout: float) -> tuple[int, bytes, float]:
    """Status code, everything read until the server closed the connection (or ``timeout``), and seconds taken."""
    started, data = time.monotonic(), b""
    sock.settimeout(timeout)
    with contextlib.suppress(socket.timeout, ConnectionResetError):  # reset: closed with our bytes unread
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 "), f"no answer within {timeout} s: {data[:200]!r}"
    return int(data[9:12]), data, time.monotonic() - started


def test_a_big_upload_without_the_token_is_refused_before_a_byte_of_its_body(tmp_path, monkeypatch):
    import tempfile

    spool = tmp_path / "spool"  # where the multipart parser would spool a body (a folder of this test's own)
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    announced = 150 * 1024 * 1024  # under the 200 MiB request cap: only the token can refuse it
    with served(tmp_path / "home", token=TOKEN) as port:
        for token in (None, "wrong"):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(request_head(port, "POST", "/api/photos", announced, token))
                status, data, seconds = answer(sock, timeout=10)  # not one byte of the body sent
                assert status == 401 and b"www-authenticate: Bearer" in data.lower().replace(b"bearer", b"Bearer")
                assert seconds < 5
                # The server closed the connection: it will not read the 150 MB either.
                assert data.endswith(b"}"), data[-100:]
        # Above the cap, with the token: 413, again from the headers alone.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request_head(port, "POST", "/api/photos", 300 * 1024 * 1024, TOKEN))
            assert answer(sock, timeout=10)[0] == 413
        assert not (tmp_path / "home" / "landing").exists()
        assert list(spool.iterdir()) == [], "an anonymous body was spooled"
        # A real upload with the token still lands.
        photo = shipped_photos("Banana", 1)[0]
        landed = httpx.post(f"http://127.0.0.1:{port}/api/photos", files=[("file", (photo.name, photo.read_bytes()))],
                            headers={"Authorization": f"Bearer {TOKEN}"})
        assert landed.status_code == 202


def test_a_body_without_a_length_is_cut_off_at_the_cap(tmp_path):
    with served(tmp_path, token=TOKEN, max_request_bytes=2_000_000) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request_head(port, "POST", "/api/photos", None, TOKEN, Transfer_Encoding="chunked"))
            part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            chunk = b"\xff" * (1 << 18)

            def send() -> None:  # 5 MB in all, while the answer is read
                with contextlib.suppress(OSError):  # the server closes while we still send
                    for _ in range(20):
                        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        time.sleep(0.02)

            sender = threading.Thread(target=send)
            sender.start()
            status, _, seconds = answer(sock, timeout=10)
            sender.join()
            assert status == 413 and seconds < 5
    assert not (tmp_path / "landing").exists() or not any((tmp_path / "landing").rglob("*"))


def test_a_slow_sender_gets_408_and_the_requests_in_flight_are_bounded(tmp_path):
    with served(tmp_path, token=TOKEN, body_seconds="1s", max_in_flight=1) as port:
        slow = socket.create_connection(("127.0.0.1", port))
        try:
            slow.sendall(request_head(port, "POST", "/api/photos", 100_000, TOKEN) + b"--b\r\n")  # then nothing
            time.sleep(0.3)
            # The slow request holds the only slot: others get 503 with Retry-After, the health check still answers.
            busy = httpx.get(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
            assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            status, _, seconds = answer(slow, timeout=10)
            assert status == 408 and seconds < 3  # body_seconds after the request began, not whenever it ends
        finally:
            slow.close()
        time.sleep(0.1)
        freed = httpx.get(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert freed.status_code == 200  # the slot was given back


def png_bomb(width: int, height: int) -> bytes:
    """A valid 16-bit greyscale PNG of zeros: a few tens of KB that decode to ``width*height*2`` bytes, and many
    times that once converted to the model's RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    packer, row = zlib.compressobj(9), b"\x00" * (1 + width * 2)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_small_png_bomb_is_refused_from_its_header_with_the_servers_peak_memory_flat(tmp_path):
    """6000x6000 16-bit pixels: under the stream's 50 MP cap, above the server's [web] max_pixels. Decoded, it would
    cost the server hundreds of MB (72 MB of pixels, 108 MB as RGB, more while converting)."""
    bomb = png_bomb(6000, 6000)
    assert len(bomb) < 200_000
    (tmp_path / "landing" / "Bomb").mkdir(parents=True)
    (tmp_path / "landing" / "Bomb" / "bomb.png").write_bytes(bomb)
    port = free_port()
    server = subprocess.Popen(
        [FRUITS, "serve", "--home", str(tmp_path), "--port", str(port), "--weights", str(tmp_path / "none.h5")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            time.sleep(0.1)
        for _ in range(3):  # warm: the app's own first-request allocations are not the bomb's
            httpx.get(f"{url}/thumbs/landing/Bomb/missing.png")
            httpx.post(f"{url}/api/identify", files=[("file", ("a.png", png_bomb(64, 64)))])
        before = peak_rss_mb(server.pid)
        identified = httpx.post(f"{url}/api/identify", files=[("file", ("bomb.png", bomb))], timeout=30)
        assert identified.status_code == 422 and "decompression bomb" in identified.json()["detail"]
        assert "6000x6000" in identified.json()["detail"]
        assert httpx.get(f"{url}/thumbs/landing/Bomb/bomb.png", timeout=30).status_code == 404
        grown = peak_rss_mb(server.pid) - before
        print(f"server peak RSS {before:.0f} MB before the bomb, +{grown:.1f} MB after")
        assert grown < 30, f"the server's peak memory grew by {grown:.0f} MB: the bomb was decoded"
    finally:
        server.terminate()  # SIGTERM: a clean stop (README, "Exit codes")
        stopped = server.wait(30)
    assert stopped == 0, server.stderr.read().decode(errors="replace")[-2000:]


# A fresh process (nothing imported by earlier tests) serves a home, then fetches the page and its static files.
FIRST_PAGE = """
import http.client, json, sys
from pathlib import Path
from conftest import make_config, serving
from fruits.web.app import create_app

with serving(create_app(make_config(Path(sys.argv[1])), None)) as url:
    host, port = url.removeprefix("http://").split(":")
    before = set(sys.modules)
    for path in ("/", "/static/app.js", "/static/style.css", "/healthz"):
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200 and response.read(), path
    print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_the_first_page_a_server_sends_imports_nothing_on_its_thread(tmp_path):
    """What anyio imports on first use (its event-loop backend, its file API) is imported as the server starts,
    before the model and dashboard threads import theirs: not on the server's thread while a page waits for it."""
    run = subprocess.run(
        [sys.executable, "-c", FIRST_PAGE, str(tmp_path)], cwd=Path(__file__).parent, capture_output=True, text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    imported = json.loads(run.stdout.strip().splitlines()[-1])
    assert [name for name in imported if name.split(".")[0] in ("anyio", "starlette", "fastapi", "uvicorn")] == []
