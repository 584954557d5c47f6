"""The front door of ``fruits serve``: one ASGI middleware that decides from a request's headers alone, before the
application (FastAPI, its multipart parser) reads any byte of the body, whether it is served at all.

In this order, each a plain JSON answer sent without reading the body (the connection is then closed by the server):

1. Host (no token only): with no token, the Host header must name loopback or ``[web] public_origin``, so a page
   of another site that rebinds its DNS name to 127.0.0.1 cannot reach a tokenless server as "same origin": 403.
2. Origin: a state-changing request (any method but GET, HEAD, OPTIONS) whose ``Origin`` is neither the Host it was
   addressed to, ``[web] public_origin`` nor in ``[web] cors_origins`` gets 403; so does ``Origin: null`` and, without
   an Origin, ``Sec-Fetch-Site: cross-site``.
3. Token: with ``[web] token`` set, every path except the page (``/``), its static files (``/static/...``) and
   ``/healthz`` needs ``Authorization: Bearer <token>``, or, for a GET of a thumbnail or a plot (an <img> sends no
   header), a URL signed by :class:`UrlSigner` that has not expired: 401.
4. Size: a Content-Length above ``[web] max_request_bytes``: 413.
5. Load: more than ``[web] max_in_flight`` requests being served: 503 with ``Retry-After``.

Then the body is counted as it streams in (413 past the cap, whatever Content-Length said) and must arrive within
``[web] body_seconds`` of the request (408): a slow sender cannot hold a slot for ever.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from fruits.config import ConfigError, WebConfig

PUBLIC_PATHS = ("/", "/healthz", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
SIGNED_PREFIXES = ("/thumbs/", "/pca/")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name, without port) is the loopback interface."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(web: WebConfig, host: str) -> None:
    """Refuse (ConfigError) to listen on a non-loopback ``host`` without a token unless ``allow_no_token`` says so."""
    if not web.token and not web.allow_no_token and not is_loopback(host):
        raise ConfigError(
            f"fruits serve --host {host}: no token set ([web] token, FRUITS_TOKEN, --token), so anyone who reaches "
            "this address could read every stored photo and land photos: set a token, or pass --allow-no-token "
            "([web] allow_no_token = true) if this is really intended"
        )


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower case (an Origin header's form)."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}" if parts.scheme and parts.netloc else ""


class UrlSigner:
    """Short-lived signed URLs: ``path?exp=T&sig=HMAC(key, path, T)``. The key is made per process (a restart
    invalidates every URL handed out). Expiries are rounded up to a tenth of the lifetime, so a URL handed out twice
    within that tenth is the same URL (the browser's cache keeps working)."""

    def __init__(self, seconds: float, key: bytes | None = None) -> None:
        self.seconds = float(seconds)
        self._key = key or secrets.token_bytes(32)

    def _mac(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, path: str, now: float | None = None) -> str:
        """``path`` (as the server decodes it: ``/thumbs/landing/a b.jpg`` for ``/thumbs/landing/a%20b.jpg``) and
        the URL to give out, its query added."""
        from urllib.parse import quote

        step = max(1, int(self.seconds / 10))
        expires = math.ceil(((now or time.time()) + self.seconds) / step) * step
        return f"{quote(path)}?exp={expires}&sig={self._mac(path, expires)}"

    def valid(self, path: str, query: bytes, now: float | None = None) -> bool:
        fields = parse_qs(query.decode("latin-1"))
        try:
            expires, given = int(fields["exp"][0]), fields["sig"][0]
        except (KeyError, ValueError, IndexError):
            return False
        if expires < (now or time.time()) or expires > (now or time.time()) + self.seconds + self.seconds / 10 + 1:
            return False
        return hmac.compare_digest(given.encode(), self._mac(path, expires).encode())


class BodyTooLarge(HTTPException):
    """The body passed the request cap while streaming in (raised from ``receive``: FastAPI answers 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body above {limit} bytes", headers={"Connection": "close"})


class BodyTooSlow(HTTPException):
    """The body did not arrive within ``[web] body_seconds`` (raised from ``receive``: FastAPI answers 408)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"request body not received within {seconds:g} s", headers={"Connection": "close"})


class FrontDoor:
    """ASGI middleware of the rules in the module docstring; ``signer`` checks the signed URLs."""

    def __init__(self, app: Any, web: WebConfig, signer: UrlSigner) -> None:
        self.app, self.web, self.signer = app, web, signer
        self.token = web.token.encode() if web.token else None
        self.allowed_origins = {origin_of(o) for o in (*web.cors_origins, web.public_origin) if o}
        public = urlsplit(web.public_origin) if web.public_origin else None
        self.public_host = public.netloc.lower() if public else None
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            status, detail, extra = refusal
            response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close", **extra})
            return await response(scope, receive, send)
        if scope["path"] == "/healthz":
            return await self.app(scope, receive, send)
        self.in_flight += 1  # one event loop: no lock needed
        try:
            await self.app(scope, self.limited_receive(receive), send)
        except (BodyTooLarge, BodyTooSlow) as exc:  # raised outside FastAPI's handlers (a response already started?)
            response = JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers={"Connection": "close"}
            )
            try:
                await response(scope, receive, send)
            except RuntimeError:  # the app had started its answer: the server drops the connection
                pass
        finally:
            self.in_flight -= 1

    def refusal(self, scope: dict, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
        """``(status, detail, headers)`` of the answer that refuses this request from its headers, or None."""
        method, path = scope["method"], scope["path"]
        host = headers.get("host", "").lower()
        if self.token is None and not self.web.allow_no_token:
            name = urlsplit(f"//{host}").hostname or ""
            if not is_loopback(name) and host != self.public_host:
                return 403, f"Host {host!r} is not this server's (no token: loopback or [web] public_origin only)", {}
        if method not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None:
                own = (f"http://{host}", f"https://{host}")
                if origin_of(origin) not in self.allowed_origins and origin.lower() not in own:
                    return 403, f"cross-site request refused (Origin {origin!r})", {}
            elif headers.get("sec-fetch-site") == "cross-site":
                return 403, "cross-site request refused (Sec-Fetch-Site: cross-site)", {}
        if self.token is not None and method != "OPTIONS" and not self.public(path):
            if not (self.bearer_ok(headers) or (method in ("GET", "HEAD") and path.startswith(SIGNED_PREFIXES)
                                                and self.signer.valid(path, scope.get("query_string", b"")))):
                return 401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
        declared = headers.get("content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > self.web.max_request_bytes):
            return 413, f"request body above {self.web.max_request_bytes} bytes", {}
        if path != "/healthz" and self.in_flight >= self.web.max_in_flight:
            return 503, f"busy: {self.in_flight} requests in flight", {"Retry-After": "1"}
        return None

    @staticmethod
    def public(path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)

    def bearer_ok(self, headers: dict[str, str]) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token or b"")

    def limited_receive(self, receive: Any) -> Any:
        """``receive`` that counts the body's bytes and gives it ``[web] body_seconds`` in all to arrive."""
        limit, seconds = self.web.max_request_bytes, self.web.body_seconds
        deadline = time.monotonic() + seconds
        received, complete = 0, False

        async def counted() -> dict:
            nonlocal received, complete
            if complete:  # after the body: only a disconnect can come, whenever it comes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise BodyTooSlow(seconds) from None
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return counted
