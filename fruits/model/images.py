"""Image bytes -> the model's RGB uint8 input, or a :class:`RejectedImage` that says why not."""

from __future__ import annotations

import io
import struct
import threading
from contextlib import contextmanager
from typing import Iterator

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from fruits.errors import Busy, Refused

# OpenCV enlarges images here (to_model_input) in the calling thread only: a Python worker runs one per core already.
cv2.setNumThreads(1)
# Phones (iPhones first) save HEIC by default: decode it like any other format.
register_heif_opener()
# decode_image enforces its own, configurable pixel limit from the header, before any decoding. Pillow's own guard
# (Image.MAX_IMAGE_PIXELS, refused at twice that) stays on as a backstop for every other Image.open of the process;
# when it fires first, the image's declared size is read again without it, for the same reason as ours.

# Images are upsampled or downsampled to the model's input with the bilinear filter (as tf.image.resize does).
RESAMPLE = Image.Resampling.BILINEAR
DEFAULT_MAX_PIXELS = 50_000_000


# ISO-BMFF brands of HEIF files (HEIC from phones included): bytes 8-12 of a file whose bytes 4-8 are "ftyp".
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}


def sniff_format(head: bytes) -> str | None:
    """The image format the first bytes of a file announce (its magic bytes, whatever its name says): ``"jpg"``,
    ``"png"`` or ``"heic"`` (the formats and extensions the stream reads), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return "heic"
    return None


class RejectedImage(Refused):
    """The bytes are not an image the featurizer accepts; ``reason`` is the quarantine reason."""


# Failures that say nothing about the input (the worker ran short of memory): raised, retried, never quarantined.
TRANSIENT = (MemoryError,)


def declared_size(data: bytes) -> tuple[int, int] | None:
    """The width and height an image's header declares, read by Pillow's format plugins without decoding any pixel
    and without Pillow's decompression-bomb check (for the reason of a refusal); None if no plugin reads it."""
    Image.init()
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        try:
            accepted = accept is None or accept(data[:16])
            if not accepted or isinstance(accepted, str):
                continue
            return factory(io.BytesIO(data), "").size
        except (SyntaxError, IndexError, TypeError, ValueError, OSError, struct.error):
            continue
    return None


def bomb(width: int, height: int, max_pixels: int) -> RejectedImage:
    return RejectedImage(
        f"decompression bomb: image declares {width}x{height} = {width * height} pixels, "
        f"above the limit of {max_pixels}"
    )


def open_checked(data: bytes, max_pixels: int, size: int | None = None) -> Image.Image:
    """``data`` opened (its header read, no pixel decoded), refused if it declares more than ``max_pixels``; with
    ``size``, a JPEG is set to decode at the smallest DCT scale still at least ``size`` x ``size`` (its ``size``
    is then what decoding will produce). Raises :class:`RejectedImage`, or what Pillow raises for unreadable bytes."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # above Pillow's own backstop limit: say what the header declares
        width, height = declared_size(data) or (0, 0)
        raise bomb(width, height, max_pixels) from None
    width, height = image.size
    if width * height > max_pixels:
        raise bomb(width, height, max_pixels)
    if size is not None and image.format == "JPEG":
        # Phone photos are 12 MP and more: let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling), never
        # below size x size, before the bilinear resize: much faster on phone photos, and the pixels stay within a
        # few levels of a full-scale decode (tests/test_images.py).
        image.draft(None, (size, size))
    return image


class BudgetExhausted(Busy):
    """No room in a :class:`PixelBudget` within the time allowed: the process is busy, not the image's fault."""


class PixelBudget:
    """Pixels a process decodes at once, at most: each decode holds its image's pixels (as its header declares,
    after JPEG DCT scaling) while it runs, so concurrent requests cannot add up to more memory than this bounds.
    An image larger than the whole budget holds all of it (it decodes alone)."""

    def __init__(self, pixels: int) -> None:
        self.total = self.free = int(pixels)
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, timeout: float) -> Iterator[None]:
        need = max(1, min(int(pixels), self.total))
        with self._cond:
            if not self._cond.wait_for(lambda: self.free >= need, timeout):
                raise BudgetExhausted(f"{need} pixels to decode, {self.free} of {self.total} free for {timeout:g} s")
            self.free -= need
        try:
            yield
        finally:
            with self._cond:
                self.free += need
                self._cond.notify_all()


def decode_image(data: bytes | None, size: int = 224, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``data`` to a ``(size, size, 3)`` uint8 RGB array.

    EXIF orientation is applied, transparency is composited on white, any mode (L, P, CMYK, I;16, ...) is converted
    to RGB, and the image is resized to ``size``x``size`` with a bilinear filter (large JPEGs are first decoded at a
    reduced scale that is still at least ``size``x``size``). Raises :class:`RejectedImage` with
    a specific reason for empty, unknown, truncated or oversized input, and with the exception's type and message for
    any other failure of decoding or converting this one image. Only :data:`TRANSIENT` errors propagate.
    """
    if data is None:
        raise RejectedImage("no content (file not read)")
    if not data:
        raise RejectedImage("empty file (0 bytes)")
    try:
        image = open_checked(data, max_pixels, size)
        image.load()
        # Inside the try: converting can fail on the input too (exif_transpose raises SyntaxError on a PNG whose
        # EXIF block is 8 zero bytes).
        return to_model_input(image, size)
    except RejectedImage:
        raise
    except TRANSIENT:  # the worker's trouble, not the image's: never a verdict on the input
        raise
    except UnidentifiedImageError:
        raise RejectedImage("not a recognised image format") from None
    except OSError as exc:  # truncated or corrupt data
        raise RejectedImage(f"cannot decode image: {exc}") from None
    except Exception as exc:  # any other decoder or conversion failure is still the input's fault, never the stream's
        raise RejectedImage(f"cannot decode image: {type(exc).__name__}: {exc}") from None


def to_model_input(image: Image.Image, size: int = 224) -> np.ndarray:
    """Upright, RGB, ``size``x``size`` uint8 array of a decoded PIL image."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale to 8 bits instead of letting convert() clip everything above 255.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    image = image.convert("RGB")
    if image.width <= size and image.height <= size and image.size != (size, size):
        # Enlarging (Fruits-360's 100x100 photos): bilinear interpolation between the 4 nearest pixels, as Pillow's
        # bilinear filter does when it enlarges, within one level of it (tests/test_images.py), at a fraction of its
        # CPU (bench/ingest_throughput.py). Shrinking stays Pillow's: its filter widens with the scale (antialiasing).
        return cv2.resize(np.asarray(image, dtype=np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLE)
    return np.asarray(image, dtype=np.uint8)
