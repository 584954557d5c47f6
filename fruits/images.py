"""Image bytes -> the model's RGB uint8 input, or a :class:`RejectedImage` that says why not."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

# Phones (iPhones first) save HEIC by default: decode it like any other format.
register_heif_opener()
# decode_image enforces its own, configurable pixel limit from the header, before any decoding; Pillow's global
# guard would otherwise pre-empt it with a fixed one.
Image.MAX_IMAGE_PIXELS = None

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


class RejectedImage(ValueError):
    """The bytes are not an image the featurizer accepts; ``str(exc)`` is the quarantine reason."""


# Failures that say nothing about the input (the worker ran short of memory): raised, retried, never quarantined.
TRANSIENT = (MemoryError,)


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
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise RejectedImage(
                f"decompression bomb: image declares {width}x{height} = {width * height} pixels, "
                f"above the limit of {max_pixels}"
            )
        if image.format == "JPEG":
            # Phone photos are 12 MP and more: let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling), never
            # below size x size, before the bilinear resize: much faster on phone photos, and the pixels stay within a
            # few levels of a full-scale decode (tests/test_images.py).
            image.draft(None, (size, size))
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
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLE)
    return np.asarray(image, dtype=np.uint8)
