"""Reproducible mutations of real photos, for fuzzing the decoder and the stream (fixed seed -> same bytes).

:func:`mutants` yields ``(kind, extension, bytes)``: bit flips, truncations at random offsets, corrupted headers,
random EXIF / ICC / XMP segments (JPEG APP1/APP2, PNG eXIf/iCCP/iTXt chunks), random but well-formed EXIF tags,
segments with lying lengths, and real images under the wrong extension.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

KINDS = (
    "bitflip", "truncate", "header", "exif-junk", "exif-tags", "icc-junk", "xmp-junk", "bad-length",
    "wrong-extension", "exif+bitflip",
)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _insert_png_chunk(png: bytes, chunk: bytes) -> bytes:
    """After IHDR (8-byte signature + 25-byte IHDR chunk), where metadata chunks go."""
    return png[:33] + chunk + png[33:]


def _insert_jpeg_segment(jpeg: bytes, marker: int, payload: bytes, length: int | None = None) -> bytes:
    """Right after SOI; ``length`` lies about the segment's size when given."""
    size = len(payload) + 2 if length is None else length
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", size & 0xFFFF) + payload + jpeg[2:]


def _metadata(rng: random.Random, data: bytes, fmt: str, what: str) -> bytes:
    junk = rng.randbytes(rng.choice([0, 1, 8, 16, 64, 300, 2000]))
    if fmt == "PNG":
        if what == "exif":
            return _insert_png_chunk(data, _png_chunk(b"eXIf", rng.choice([b"", b"MM\x00*", b"II*\x00"]) + junk))
        if what == "icc":
            body = junk if rng.random() < 0.5 else zlib.compress(junk)
            return _insert_png_chunk(data, _png_chunk(b"iCCP", b"icc\x00\x00" + body))
        return _insert_png_chunk(data, _png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00<x:xmpmeta " + junk))
    if what == "exif":
        return _insert_jpeg_segment(data, 0xE1, b"Exif\x00\x00" + rng.choice([b"", b"MM\x00*", b"II*\x00"]) + junk)
    if what == "icc":
        return _insert_jpeg_segment(data, 0xE2, b"ICC_PROFILE\x00" + bytes([1, rng.randint(0, 3)]) + junk)
    return _insert_jpeg_segment(data, 0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta " + junk)


def _exif_tags(rng: random.Random, image: Image.Image, fmt: str) -> bytes:
    """A well-formed EXIF block with random values: orientation (0-65535), sizes, offsets to nowhere."""
    exif = Image.Exif()
    exif[0x0112] = rng.choice([0, 1, 3, 5, 6, 7, 8, 9, 255, 65535])
    for _ in range(rng.randint(0, 6)):
        exif[rng.choice([0x0100, 0x0101, 0x8769, 0x8825, 0x010F, 0x0131, 0x9003, rng.randint(1, 65535)])] = rng.choice(
            [rng.randint(0, 2**31), rng.randbytes(rng.randint(0, 40)).decode("latin-1"), 0]
        )
    try:
        block = exif.tobytes()
    except Exception:  # Pillow cannot write that value: keep the orientation alone
        exif = Image.Exif()
        exif[0x0112] = rng.randint(0, 65535)
        block = exif.tobytes()
    return encode(image, fmt, exif=block)


def _flip(rng: random.Random, data: bytes, flips: int) -> bytes:
    mutable = bytearray(data)
    for _ in range(flips):
        position = rng.randrange(len(mutable))
        mutable[position] ^= 1 << rng.randrange(8)
    return bytes(mutable)


def mutate(rng: random.Random, kind: str, image: Image.Image) -> tuple[str, bytes]:
    """One mutant of ``image`` of ``kind``: (extension, bytes)."""
    fmt = rng.choice(["JPEG", "JPEG", "PNG"])
    extension = "jpg" if fmt == "JPEG" else "png"
    data = encode(image, fmt, quality=rng.randint(50, 95)) if fmt == "JPEG" else encode(image, fmt)
    if kind == "bitflip":
        return extension, _flip(rng, data, rng.choice([1, 2, 8, 32, 128]))
    if kind == "truncate":
        return extension, data[: rng.randrange(len(data))]
    if kind == "header":
        end = rng.randint(2, 64)
        return extension, data[: rng.randrange(end)] + rng.randbytes(rng.randint(1, 16)) + data[end:]
    if kind in ("exif-junk", "icc-junk", "xmp-junk"):
        return extension, _metadata(rng, data, fmt, kind.split("-")[0])
    if kind == "exif-tags":
        return extension, _exif_tags(rng, image, fmt)
    if kind == "bad-length":
        if fmt == "PNG":
            chunk = _png_chunk(b"tEXt", b"Comment\x00" + rng.randbytes(20))
            lying = struct.pack(">I", rng.choice([0, 1, 2**31 - 1, 0xFFFFFFFF])) + chunk[4:]
            return extension, _insert_png_chunk(data, lying)
        return extension, _insert_jpeg_segment(data, 0xFE, rng.randbytes(30), length=rng.choice([0, 1, 2, 40000, 65535]))
    if kind == "wrong-extension":
        other = rng.choice(["PNG", "JPEG", "HEIF"] if fmt == "JPEG" else ["JPEG", "HEIF"])
        return extension, encode(image.convert("RGB"), other)
    if kind == "exif+bitflip":
        return extension, _flip(rng, _metadata(rng, data, fmt, "exif"), rng.choice([1, 4, 16]))
    raise ValueError(kind)


def mutants(photos: list[Path], count: int, seed: int) -> Iterator[tuple[str, str, bytes]]:
    """``count`` mutants of the ``photos``, kinds in turn: ``(kind, extension, bytes)``; the same for the same seed."""
    rng = random.Random(seed)
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        image = Image.open(photos[rng.randrange(len(photos))])
        image.load()
        yield (kind, *mutate(rng, kind, image))


def outcome_of(decode: Callable[[bytes], object], data: bytes) -> str:
    """``"decoded"``, or the rejection reason with its details cut (the first words before ':' or '(')."""
    from fruits.model.images import RejectedImage

    try:
        decode(data)
        return "decoded"
    except RejectedImage as exc:
        return reason_class(str(exc))


def reason_class(reason: str) -> str:
    """A quarantine reason without the details that vary per file: ``cannot decode image: SyntaxError``."""
    head, _, rest = reason.partition(": ")
    if head == "cannot decode image" and rest:
        detail = rest.split(": ")[0] if ": " in rest else rest
        return f"{head}: {detail.split('(')[0].strip()[:60]}"
    return reason.split("(")[0].strip()[:80]


# Pieces of names the file system allows and that break naive code: not UTF-8, control characters, Hadoop's glob and
# URI characters, combining marks, right-to-left override, a leading dash, quotes, HTML.
NAME_PIECES = [
    b"caf\xe9", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\n", b"\r", b"\t", b"\x1b[31m", b"\x7f", b":", b"[", b"]", b"{",
    b"}", b"*", b"?", b"%", b"%2F", b"\\", b"#", b" ", b"-", b"'", b'"', b"<b>", b"&amp;", "e\u0301".encode(),
    "\u00e9".encode(), "\u202e".encode(), "\U0001f34c".encode(), "\u0130".encode(), b"..", b"~", b"photo",
]


def random_name(rng: random.Random, extension: str) -> bytes:
    """A file name (bytes) the file system allows, of random odd pieces, ending in ``.extension``, never hidden
    (a first ``.``, ``_`` or ``~``, which the stream never reads), at most 255 bytes; sometimes exactly 255."""
    tail = b"." + extension.encode()
    if rng.random() < 0.1:  # the longest name there can be
        body = bytes(rng.choice(b"abcdefghij") for _ in range(255 - len(tail)))
    else:
        body = b"".join(rng.choice(NAME_PIECES) for _ in range(rng.randint(1, 8)))[: 255 - len(tail)]
    body = body.replace(b"/", b"-").replace(b"\0", b"-")
    if not body or body[:1] in (b".", b"_", b"~"):
        body = b"x" + body[: 255 - len(tail) - 1]
    return body + tail
