"""``fruits serve``: the HTTP front door of a home, beside ``fruits stream`` (no Spark in this process).

- ``POST /api/photos``: multipart ``file`` (one or more) and an optional ``label``; each photo lands atomically
  through :func:`fruits.landing.drop`, the code of ``fruits drop``, with its name and label rules. 202
  ``{"photos": [{"name", "path", "label", "note"}]}`` (``path`` relative to the landing folder; ``note`` "placed", or
  "already there" for bytes already landed under that name).
- ``POST /api/identify``: multipart ``file``; the object of ``fruits identify --json`` for it
  (:class:`fruits.identify.Identifier`, model loaded once per process), each neighbour with a ``thumbnail`` URL.
- ``GET /api/status``: the object of ``fruits status --json``; ``GET /api/dashboard``: what the page's dashboard draws.
- ``GET /``: the page (``fruits/web_static/``); ``/thumbs/...`` and ``/pca/...``: see :mod:`fruits.web_files`.

Errors: 401 without the bearer token when one is set (POST endpoints only), 413 above ``[model] max_bytes`` per photo,
``[web] max_request_bytes`` per request or ``[web] max_files`` photos, 415 when the bytes are not JPEG, PNG or
HEIF/HEIC (magic bytes; the name is not trusted), 422 for a bad label or undecodable bytes, 503 before the first PCA.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import threading
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from fruits.config import Config
from fruits.identify import Identifier, IdentifyError
from fruits.images import sniff_format
from fruits.landing import Dropped, LedgerNote, drop, local_folder
from fruits.object_landing import ObjectLanding
from fruits.s3 import is_s3
from fruits.names import UnsafeName, check_label, landing_name
from fruits.model import WeightsRef
from fruits.web_dashboard import Dashboard
from fruits.web_files import HomeFiles

log = logging.getLogger("fruits.web")

STATIC = Path(__file__).resolve().parent / "web_static"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; frame-ancestors 'none'"
    ),
}


class RequestTooLarge(HTTPException):
    """The request body passed ``[web] max_request_bytes`` (raised while it streams in: FastAPI answers 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body above {limit} bytes")


class BodyLimit:
    """ASGI middleware: 413 for a request body above ``limit`` bytes, from its Content-Length or while it streams in
    (a client may send none), before the multipart parser spools it to disk."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        received, started = 0, False

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise RequestTooLarge(self.limit)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except RequestTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        response = JSONResponse({"detail": f"request body above {self.limit} bytes"}, status_code=413)
        await response({"type": "http"}, None, send)


def bearer_guard(token: str | None):
    """A dependency: 401 unless the request carries ``Authorization: Bearer <token>`` (no-op without a token)."""

    def guard(request: Request) -> None:
        if not token:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return guard


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
        self.note = LedgerNote(config.files_table, self.landing, "upload") if self.landing else None
        self.objects = ObjectLanding(config.landing, config.files_table, "upload") if is_s3(config.landing) else None
        self.files = HomeFiles(config)
        self.dashboard = Dashboard(config, self.files)
        self._identifier: Identifier | None = None
        self._lock = threading.Lock()

    def identifier(self) -> Identifier:
        """The process's one :class:`Identifier` (its model is built on first use or by :meth:`warm`)."""
        with self._lock:
            if self._identifier is None:
                if self.weights is None:
                    raise IdentifyError("this server was started without weights: identify is off")
                self._identifier = Identifier(self.config, self.weights)
            return self._identifier

    def warm(self) -> None:
        """Load the model (and the reference rows, if a PCA exists) before the first photo asks."""
        try:
            identifier = self.identifier()
            identifier.featurizer()
            identifier.reference()
            log.info("identify ready (model and PCA loaded)")
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
            raise HTTPException(422, f"bad label: {exc}") from None
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
            (result,) = self.objects.drop([source], list(self.extensions), label)
        else:
            (result,) = drop([source], self.landing, list(self.extensions), label, self.note)
        return result

    def _below_landing(self, target: Path | str) -> str:
        """Where a landed photo is, relative to the landing folder (``Banana/a.jpg``)."""
        if isinstance(target, Path):
            return target.relative_to(self.landing).as_posix()
        return str(target)[len(self.config.landing.rstrip("/")) + 1 :]

    def identify(self, upload: UploadFile) -> dict[str, Any]:
        """``fruits identify --json``'s object for one upload, neighbours with thumbnail URLs."""
        checked_upload(upload, self.max_bytes)
        data = upload.file.read()
        try:
            (result,) = self.identifier().identify([(upload.filename or "photo", data)], with_paths=True)
        except IdentifyError as exc:
            raise HTTPException(503, str(exc)) from None
        if "error" in result:
            raise HTTPException(422, f"{result['photo']}: {result['error']}")
        for neighbour in result["neighbors"]:
            neighbour["thumbnail"] = self.files.thumbnail_url(neighbour.pop("path"))
        return result


def create_app(config: Config, weights: WeightsRef | None = None, warm: bool = True) -> FastAPI:
    """The FastAPI app of ``fruits serve`` for one home. ``[web] token`` and ``cors_origins`` set its security;
    with ``warm``, the model loads (in the background) when the server starts, and the dashboard samples the stream."""
    web = config.web
    service = WebService(config, weights)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sampler = threading.Thread(
            target=service.dashboard.sampler.run, args=(stop, web.sample_seconds), name="sampler", daemon=True
        )
        sampler.start()
        if warm and weights is not None:
            threading.Thread(target=service.warm, name="warm-identify", daemon=True).start()
        yield
        stop.set()
        sampler.join(5)

    app = FastAPI(title="Fruits!", summary="Upload photos, identify fruit, watch the stream", lifespan=lifespan)
    app.state.service = service
    if web.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(web.cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization"],
        )
    app.add_middleware(BodyLimit, limit=web.max_request_bytes)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    app.include_router(api_routes(service, Depends(bearer_guard(web.token or None))))
    app.include_router(file_routes(service))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def api_routes(service: WebService, guard: Any) -> APIRouter:
    """``/api/*``: uploads and identify (behind ``guard``, the bearer token check), status, dashboard, config."""
    router = APIRouter(prefix="/api")

    @router.post("/photos", status_code=202, dependencies=[guard])
    def post_photos(file: list[UploadFile] = File(...), label: str | None = Form(None)) -> dict[str, Any]:
        """Land photos in ``landing/<label>/`` atomically, as ``fruits drop`` does."""
        return {"photos": service.land(file, label)}

    @router.post("/identify", dependencies=[guard])
    def post_identify(file: UploadFile = File(...)) -> dict[str, Any]:
        """What fruit is this photo? The 5 nearest labelled photos vote."""
        return service.identify(file)

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
        """What the page needs to know: whether POSTs need a token, the limits, the refresh interval."""
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
    """The page, thumbnails and PCA plots (only from the folders :mod:`fruits.web_files` allows)."""
    router = APIRouter()

    @router.get("/thumbs/{root}/{relative:path}")
    async def get_thumbnail(root: str, relative: str) -> Response:
        return image_response(await run_in_threadpool(service.files.thumbnail, root, relative), "jpeg", 3600)

    @router.get("/pca/v{version}/{name}")
    async def get_plot(version: int, name: str) -> Response:
        return image_response(await run_in_threadpool(service.files.plot, version, name), "png", 86400)

    @router.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return router


def serve(config: Config, weights: WeightsRef | None, host: str, port: int) -> None:
    """Run the app under uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    uvicorn.run(create_app(config, weights), host=host, port=port, log_level="info", access_log=False)
