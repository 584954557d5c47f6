"""The only files ``fruits serve`` reads from the home on a client's behalf: thumbnails of labelled photos (under the
landing folder, or ``[paths] archive`` when one is configured) and the PCA plots of ``models/pca/vN/``.

A client names a file by a root name and a path relative to it (``/thumbs/landing/Banana/1.jpg``); the path is
resolved (symlinks included) and must still lie inside that root, be a regular file and have a name the stream reads.
Anything else is "not found": there is no way to name another file of the machine. With a token set, the URLs are
the signed ones the API hands out (:class:`fruits.web.door.UrlSigner`): an <img> cannot send the token.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from PIL import ImageOps

from fruits.config import Config
from fruits.model.images import BudgetExhausted, RejectedImage, open_checked
from fruits.landing.drop import local_folder
from fruits.home.names import is_candidate
from fruits.home.home import Home
from fruits.web.door import UrlSigner

# A context to decode image bytes in (fruits.web.app.WebService.decoding: room in the server's decode budget).
Decoding = Callable[[bytes, int], AbstractContextManager]



def local_roots(config: Config) -> dict[str, Path]:
    """Root name -> resolved local folder whose photos may be shown: ``landing``, and ``archive`` if configured.
    Roots on remote filesystems (s3a://, hdfs://) are left out: their thumbnails are not served."""
    roots = {}
    for name in ("landing", "archive"):
        try:
            roots[name] = local_folder(config.location(name)).resolve()
        except ValueError:
            continue
    return roots


def thumbnail_jpeg(data: bytes, size: int, max_pixels: int, decoding: Decoding | None = None) -> bytes:
    """A JPEG at most ``size`` pixels on its longest side, upright (EXIF), of image bytes the stream reads; decoded
    inside ``decoding(data, size)`` (the caller's budget)."""
    try:
        with (decoding or (lambda data, size: nullcontext()))(data, size):
            image = open_checked(data, max_pixels, size)  # large JPEGs decoded at a reduced DCT scale
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((size, size))
    except (RejectedImage, BudgetExhausted):
        raise
    except Exception as exc:  # whatever the decoder says, the file is not showable
        raise RejectedImage(f"cannot decode image: {exc}") from None
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


class HomeFiles:
    """Thumbnails (kept in a small LRU cache) and PCA plots of one home, by the rules of the module docstring."""

    def __init__(
        self, config: Config, signer: UrlSigner | None = None, decoding: Decoding | None = None,
        cache_entries: int = 512, *, home: Home | None = None,
    ) -> None:
        self.config, self.signer, self.decoding = config, signer, decoding
        self.pca_models = (home or Home.from_config(config)).pca_store
        self.roots = local_roots(config)
        self.extensions = config.stream.extensions
        self.size = config.web.thumbnail_px
        self.max_pixels = config.model.max_pixels
        self.max_bytes = config.model.max_bytes
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._entries = cache_entries
        self._lock = threading.Lock()

    def thumbnail_url(self, stored_path: str) -> str | None:
        """The URL of the thumbnail of a table row's ``path`` (``file:/...``), or None if it is in no root."""
        local = Path(local_folder(stored_path)) if stored_path.startswith(("file:", "/")) else None
        if local is None:
            return None
        for name, root in self.roots.items():
            if local.is_relative_to(root):
                return self.url(f"/thumbs/{name}/{local.relative_to(root).as_posix()}")
        return None

    def url(self, path: str) -> str:
        """The URL of ``path`` to hand out: signed when there is a signer."""
        return self.signer.sign(path) if self.signer else quote(path)

    def resolve(self, root_name: str, relative: str) -> Path | None:
        """The file ``relative`` names under root ``root_name``, or None if that is not a photo inside the root."""
        root = self.roots.get(root_name)
        if root is None or not relative or "\x00" in relative:
            return None
        parts = relative.replace("\\", "/").split("/")
        if relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
            return None
        candidate = (root / Path(*parts)).resolve()  # symlinks followed: where the bytes really are
        inside = candidate.is_relative_to(root) and candidate.is_file()
        return candidate if inside and is_candidate(candidate.name, self.extensions) else None

    def thumbnail(self, root_name: str, relative: str) -> bytes | None:
        """JPEG thumbnail of a photo under a root, or None (not found, not allowed, too big, undecodable)."""
        path = self.resolve(root_name, relative)
        if path is None:
            return None
        stat = path.stat()
        if stat.st_size > self.max_bytes:
            return None
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            data = thumbnail_jpeg(path.read_bytes(), self.size, self.max_pixels, self.decoding)
        except (OSError, RejectedImage):
            return None
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self._entries:
                self._cache.popitem(last=False)
        return data

    def plot_url(self, version: int, name: str) -> str:
        return self.url(f"/pca/v{int(version)}/{name}")

    def plot(self, version: int, name: str) -> bytes | None:
        """A PNG plot of PCA version ``version`` (a plain ``name.png`` in its folder), or None."""
        return self.pca_models.plot(version, name)
