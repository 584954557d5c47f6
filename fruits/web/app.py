"""``fruits serve``: the HTTP front door of a home, beside ``fruits stream`` (no Spark in this process).

- ``POST /api/photos``: multipart ``file`` (one or more) and an optional ``label``; each photo lands atomically
  through :func:`fruits.landing.drop`, the code of ``fruits drop``, with its name and label rules. 202
  ``{"photos": [{"name", "path", "label", "note"}]}`` (``path`` relative to the landing folder; ``note`` "placed", or
  "already there" for bytes already landed under that name).
- ``POST /api/identify``: multipart ``file``; the object of ``fruits identify --json`` for it
  (:class:`fruits.model.identify.Identifier`, model loaded once per process), each neighbour with a ``thumbnail`` URL.
- ``GET /api/status``: the object of ``fruits status --json``; ``GET /api/dashboard``: what the page's dashboard draws.
- ``GET /``: the page (``fruits/web/static/``); ``GET /healthz``: ``{"status": "ok"}`` and nothing else;
  ``/thumbs/...`` and ``/pca/...``: see :mod:`fruits.web.home_files`, on signed URLs the API hands out.

Who may ask what, and the answers sent from the headers before any byte of the body is read (401 without the token
when one is set, 403 for a foreign Origin, 413 for a Content-Length above the cap, 503 when busy): see
:mod:`fruits.web.door`. Then: 408 for a body slower than ``[web] body_seconds``, 413 above ``[model] max_bytes`` per
photo, ``[web] max_request_bytes`` per request or ``[web] max_files`` photos, 415 when the bytes are not JPEG, PNG or
HEIF/HEIC (magic bytes; the name is not trusted), 422 for a bad label or undecodable bytes (a decompression bomb
included), 503 before the first PCA or when the decode budget stays full.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, File, Form, HTTPException, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from fruits.config import Config
from fruits.home.home import Home
from fruits.web.cpu_share import CpuShare
from fruits.model.identify import Identifier, IdentifyError
from fruits.model.images import BudgetExhausted, PixelBudget, RejectedImage, bomb, open_checked, sniff_format
from fruits.landing.drop import Dropped, LedgerRecorder, drop, local_folder
from fruits.landing.writers import WriterLease
from fruits.landing.stage import ObjectLanding
from fruits.home.s3 import is_s3
from fruits.home.names import UnsafeName, check_label, landing_name
from fruits.model.weights import WeightsRef
from fruits.web.dashboard import Dashboard
from fruits.web.door import FrontDoor, UrlSigner, check_exposure
from fruits.web.home_files import HomeFiles

log = logging.getLogger("fruits.web.app")

STATIC = Path(__file__).resolve().parent / "static"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; frame-ancestors 'none'"
    ),
}


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: per thread; threads it starts inherit it)."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
        except (OSError, AttributeError):  # not permitted, or not Linux: run at the normal priority
            log.warning("could not lower the priority of the identify threads")


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response (plain ASGI: the body is left alone)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, with_headers)


def checked_upload(upload: UploadFile, max_bytes: int) -> str:
    """The format (``jpg``, ``png``, ``heic``) of an uploaded photo's bytes; 413 above ``max_bytes``, 415 if none."""
    size = upload.size if upload.size is not None else upload.file.seek(0, 2)
    if size > max_bytes:
        raise HTTPException(413, f"{upload.filename}: {size} bytes, above the cap of {max_bytes}")
    upload.file.seek(0)
    kind = sniff_format(upload.file.read(16))
    upload.file.seek(0)
    if kind is None:
        raise HTTPException(415, f"{upload.filename}: not a JPEG, PNG or HEIF/HEIC image (by its bytes)")
    return kind


class WebService:
    """The state one server process shares between requests: config, identifier, files, dashboard."""

    def __init__(self, config: Config, weights: WeightsRef | None) -> None:
        self.config = config
        self.home = Home.from_config(config)
        self.weights = weights
        self.extensions = config.stream.extensions
        self.max_bytes = config.model.max_bytes
        self.max_files = config.web.max_files
        # Uploads land as `fruits drop` lands files, recorded in the file ledger before they appear: on a local
        # landing folder (atomic link), or on S3 (one conditional PUT per photo); elsewhere (hdfs://) they get 501.
        try:
            self.landing: Path | None = local_folder(config.landing)
        except ValueError:
            self.landing = None
        # The stream waits for an upload recorded but not visible yet while this heartbeats (from the first upload on).
        self.lease = WriterLease.for_home(self.home)
        ledger = self.home.ledger  # kept for the server's life: each upload's commit reads no log again
        self.recorder = LedgerRecorder(ledger, self.landing, "upload", self.lease) if self.landing else None
        self.objects = (
            ObjectLanding(config.landing, ledger, "upload", self.home.files, lease=self.lease) if is_s3(config.landing) else None
        )
        self.signer = UrlSigner(config.web.signed_url_seconds)
        # Every decode of the process (identify, thumbnails) holds its pixels in one budget: bounded memory.
        self.budget = PixelBudget(config.web.decode_pixels)
        self.max_pixels = min(config.web.max_pixels, config.model.max_pixels)
        self.files = HomeFiles(config, self.signer, self.decoding, home=self.home)
        self.dashboard = Dashboard(self.home, self.files)
        # Identify runs on a few threads, its model on few OpenVINO threads; requests beyond them wait their turn.
        # The threads run at a lower priority (nice), and so do the threads OpenVINO starts from them (the model is
        # built and first run on one of them): a stream on the same machine keeps the CPU it needs.
        self.identify_pool = ThreadPoolExecutor(
            config.web.identify_workers, thread_name_prefix="identify", initializer=lower_priority,
            initargs=(config.web.identify_nice,),
        )
        share = config.web.identify_cpu_share
        self.identify_share = CpuShare(share) if share else None
        self._identifier: Identifier | None = None
        self._lock = threading.Lock()

    def identifier(self) -> Identifier:
        """The process's one :class:`Identifier` (its model is built on first use or by :meth:`warm`)."""
        with self._lock:
            if self._identifier is None:
                if self.weights is None:
                    raise IdentifyError("this server was started without weights: identify is off")
                self._identifier = Identifier(self.home, self.weights, threads=self.config.web.identify_threads)
            return self._identifier

    def decoding(self, data: bytes, size: int):
        """A context that holds room in the decode budget for ``data``'s pixels (as its header declares, after JPEG
        DCT scaling to ``size``) while the caller decodes it: RejectedImage for an unreadable header or above
        ``[web] max_pixels`` (or the stream's ``[model] max_pixels`` before scaling),
        BudgetExhausted if no room frees up within ``[web] decode_wait_seconds``."""
        try:
            width, height = open_checked(data, self.config.model.max_pixels, size).size
        except RejectedImage:
            raise
        except Exception as exc:  # whatever Pillow says of the header: not an image it decodes
            raise RejectedImage(f"cannot decode image: {exc}") from None
        if width * height > self.max_pixels:
            raise bomb(width, height, self.max_pixels)
        return self.budget.hold(width * height, self.config.web.decode_wait_seconds)

    def warm(self) -> None:
        """Load the model (and the reference rows, if a PCA exists) before the first photo asks."""
        try:
            identifier = self.identifier()
            identifier.featurizer()
            identifier.reference()
            log.info("identify ready (model and PCA loaded)")
            if self.identify_share is not None:
                self.identify_share.forgive()
        except IdentifyError as exc:
            log.warning("identify not ready yet: %s", exc)
        except Exception:  # never kill the server for this: /api/identify reports the problem per request
            log.exception("could not load the model for identify")

    def land(self, uploads: list[UploadFile], label: str | None) -> list[dict[str, Any]]:
        """Check every upload first (nothing lands if one is refused), then land each through ``drop``."""
        if self.landing is None and self.objects is None:
            raise HTTPException(501, f"landing folder {self.config.landing} takes no uploads: use `fruits drop`")
        if len(uploads) > self.max_files:
            raise HTTPException(413, f"{len(uploads)} photos in one request, above the limit of {self.max_files}")
        try:
            label = check_label(label or None)  # an empty form field: no label
        except UnsafeName as exc:
            raise HTTPException(422, str(exc)) from None  # names the label, as fruits drop does
        kinds = [checked_upload(upload, self.max_bytes) for upload in uploads]
        landed = []
        with tempfile.TemporaryDirectory(prefix="fruits-upload-") as scratch:
            for index, (upload, kind) in enumerate(zip(uploads, kinds)):
                source = Path(scratch) / str(index) / landing_name(upload.filename, self.extensions, kind)
                source.parent.mkdir()
                with open(source, "wb") as out:
                    while chunk := upload.file.read(1 << 20):
                        out.write(chunk)
                result = self._drop(source, label)
                landed.append({
                    "name": PurePosixPath(str(result.target)).name if result.target else source.name,
                    "path": self._below_landing(result.target) if result.target else None,
                    "label": label,
                    "note": result.note,
                })
        return landed

    def _drop(self, source: Path, label: str | None) -> Dropped:
        if self.objects is not None:
            (result,) = self.objects.drop([source], list(self.extensions), label=label)
        else:
            (result,) = drop([source], self.landing, list(self.extensions), label=label, recorder=self.recorder)
        return result

    def _below_landing(self, target: Path | str) -> str:
        """Where a landed photo is, relative to the landing folder (``Banana/a.jpg``)."""
        if isinstance(target, Path):
            return target.relative_to(self.landing).as_posix()
        return str(target)[len(self.config.landing.rstrip("/")) + 1 :]

    def identify(self, upload: UploadFile) -> dict[str, Any]:
        """``fruits identify --json``'s object for one upload, neighbours with (signed) thumbnail URLs."""
        checked_upload(upload, self.max_bytes)
        if self.identify_share is not None:
            self.identify_share.wait_turn()  # clients asking in a loop get [web] identify_cpu_share between them
        data = upload.file.read()
        name = upload.filename or "photo"
        try:
            with self.decoding(data, self.config.model.image_size):  # a bomb is refused before the model is asked
                (result,) = self.identifier().identify([(name, data)], with_paths=True)
        except IdentifyError as exc:
            raise HTTPException(503, str(exc)) from None
        except RejectedImage as exc:
            raise HTTPException(422, f"{name}: {exc}") from None
        except BudgetExhausted as exc:
            raise HTTPException(503, f"busy decoding other photos: {exc}", headers={"Retry-After": "2"}) from None
        if "error" in result:
            raise HTTPException(422, f"{result['photo']}: {result['error']}")
        for neighbour in result["neighbors"]:
            neighbour["thumbnail"] = self.files.thumbnail_url(neighbour.pop("path"))
        return result


def create_app(config: Config, weights: WeightsRef | None = None, *, warm: bool = True) -> FastAPI:
    """The FastAPI app of ``fruits serve`` for one home. ``[web] token`` and ``cors_origins`` set its security;
    with ``warm``, the model loads (in the background) when the server starts, and the dashboard samples the stream."""
    web = config.web
    service = WebService(config, weights)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await import_what_requests_use()  # before the threads below start importing on their own
        sampler = threading.Thread(
            target=service.dashboard.sampler.run, args=(stop, web.sample_seconds), name="sampler", daemon=True
        )
        sampler.start()
        if warm and weights is not None:
            service.identify_pool.submit(service.warm)  # on an identify thread: OpenVINO's threads inherit its nice
        yield
        stop.set()
        service.identify_pool.shutdown(wait=False, cancel_futures=True)
        service.lease.stop()
        sampler.join(5)

    app = FastAPI(title="Fruits!", summary="Upload photos, identify fruit, watch the stream", lifespan=lifespan)
    app.state.service = service
    if web.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(web.cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization"],
        )

    # Every request meets the front door (token, Origin, size, load) before anything reads its body; every answer,
    # a refusal of the front door's included, carries the security headers.
    app.add_middleware(FrontDoor, web=web, signer=service.signer)
    app.add_middleware(SecurityHeaders)

    app.include_router(api_routes(service))
    app.include_router(file_routes(service))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def import_what_requests_use() -> None:
    """Import, on the server's thread before any request and before the model and dashboard threads start, what
    anyio imports only on first use: its event-loop backend and its file API (``FileResponse``, ``StaticFiles``).

    Left to the first request, they ran on the server's thread beside the imports of the process's other threads,
    and a CI run lost its first page to an exception raised inside one (the page's headers were sent: the browser
    waited for a body that never came)."""
    await anyio.sleep(0)  # anyio.get_async_backend(): imports anyio._backends._asyncio and what it needs
    anyio.open_file  # noqa: B018 (resolving the name is the import)


def api_routes(service: WebService) -> APIRouter:
    """``/api/*``: uploads, identify, status, dashboard, config (the token is checked by the front door)."""
    router = APIRouter(prefix="/api")

    @router.post("/photos", status_code=202)
    def post_photos(file: list[UploadFile] = File(...), label: str | None = Form(None)) -> dict[str, Any]:
        """Land photos in ``landing/<label>/`` atomically, as ``fruits drop`` does."""
        return {"photos": service.land(file, label)}

    @router.post("/identify")
    async def post_identify(file: UploadFile = File(...)) -> dict[str, Any]:
        """What fruit is this photo? The 5 nearest labelled photos vote (on the bounded identify pool)."""
        return await asyncio.get_running_loop().run_in_executor(service.identify_pool, service.identify, file)

    @router.get("/status")
    async def get_status() -> dict[str, Any]:
        """The object of ``fruits status --json``."""
        return await run_in_threadpool(service.dashboard.status)

    @router.get("/dashboard")
    async def get_dashboard() -> dict[str, Any]:
        """Status, images/s, last micro-batches, quarantine reasons, PCA plots: what the page draws."""
        return await run_in_threadpool(service.dashboard.snapshot)

    @router.get("/config")
    def get_config() -> dict[str, Any]:
        """What the page needs to know: whether a token is set, the limits, the refresh interval."""
        return {
            "token_required": bool(service.config.web.token),
            "max_bytes": service.max_bytes,
            "max_files": service.max_files,
            "refresh_seconds": service.dashboard.refresh,
            "window_seconds": service.dashboard.sampler.window,
            "uploads": service.landing is not None or service.objects is not None,
        }

    return router


def image_response(data: bytes | None, kind: str, max_age: int) -> Response:
    """``data`` as an image the browser may cache privately for ``max_age`` seconds; 404 when there is none."""
    if data is None:
        raise HTTPException(404, "no such image")
    return Response(data, media_type=f"image/{kind}", headers={"Cache-Control": f"private, max-age={max_age}"})


def file_routes(service: WebService) -> APIRouter:
    """The page, thumbnails and PCA plots (only from the folders :mod:`fruits.web.home_files` allows)."""
    router = APIRouter()

    @router.get("/thumbs/{root}/{relative:path}")
    async def get_thumbnail(root: str, relative: str) -> Response:
        try:
            data = await run_in_threadpool(service.files.thumbnail, root, relative)
        except BudgetExhausted as exc:
            raise HTTPException(503, f"busy decoding other photos: {exc}", headers={"Retry-After": "2"}) from None
        return image_response(data, "jpeg", 3600)

    @router.get("/pca/v{version}/{name}")
    async def get_plot(version: int, name: str) -> Response:
        return image_response(await run_in_threadpool(service.files.plot, version, name), "png", 86400)

    @router.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @router.get("/healthz", include_in_schema=False)
    def health() -> dict[str, str]:
        """Liveness for orchestrators: no token needed, so it says nothing about the home."""
        return {"status": "ok"}

    return router


def serve(config: Config, weights: WeightsRef | None, host: str, port: int) -> None:
    """Run the app under uvicorn until SIGINT/SIGTERM; ConfigError for a non-loopback ``host`` without a token,
    unless ``[web] allow_no_token`` says so."""
    import uvicorn

    check_exposure(config.web, host)
    # uvicorn shuts down gracefully on SIGTERM, then restores the handler it found and raises the signal again: with
    # the default handler the process would end by the signal (exit 143), not as a clean stop (README, "Exit codes").
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(create_app(config, weights), host=host, port=port, log_level="info", access_log=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
