"""Decoding real and deliberately broken images into the model's input."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from conftest import shipped_photos
from fruits.model.images import RejectedImage, decode_image

pytestmark = pytest.mark.fast  # no Spark, no TensorFlow, no ../shared (make test-fast)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def real_photo() -> Image.Image:
    return Image.open(shipped_photos("Banana", 1)[0]).convert("RGB")


def test_real_jpeg_becomes_224_rgb_uint8_with_a_bilinear_resize():
    """Enlarged (a 100x100 Fruits-360 photo) within one level of Pillow's bilinear filter; shrunk, exactly Pillow's."""
    data = shipped_photos("Banana", 1)[0].read_bytes()
    array = decode_image(data)
    assert array.shape == (224, 224, 3) and array.dtype == np.uint8
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    difference = np.abs(array.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.5

    shrunk = decode_image(data, size=64)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
    assert np.array_equal(shrunk, expected)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P"])
def test_other_colour_modes_are_converted_to_rgb(mode):
    photo = real_photo().convert(mode)
    array = decode_image(encode(photo, "PNG" if mode == "P" else "JPEG"))
    assert array.shape == (224, 224, 3)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    assert (decode_image(encode(rgba, "PNG"), size=10) == 255).all()


def test_exif_rotation_is_applied():
    photo = real_photo().resize((120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated = decode_image(encode(photo, "JPEG", exif=exif.tobytes(), quality=95), size=224)
    upright = decode_image(encode(photo.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95), size=224)
    assert np.abs(rotated.astype(int) - upright.astype(int)).mean() < 3


def test_large_jpeg_is_decoded_at_reduced_scale_with_the_same_content():
    photo = real_photo().resize((4000, 3000), Image.Resampling.BICUBIC)  # a phone-sized photo of a real fruit
    data = encode(photo, "JPEG", quality=90)
    drafted = decode_image(data).astype(int)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    assert not np.array_equal(drafted, full)  # it was decoded at 1/8 scale (500x375), not in full ...
    assert np.abs(drafted - full.astype(int)).mean() < 1.0  # ... and is the same picture within rounding


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty file"),
        (os.urandom(2000), "not a recognised image format"),
        (b"<html><body>not an image</body></html>", "not a recognised image format"),
    ],
)
def test_bad_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(RejectedImage, match=reason):
        decode_image(data)


def test_truncated_jpeg_is_rejected():
    data = shipped_photos("Banana", 1)[0].read_bytes()
    with pytest.raises(RejectedImage, match="truncated"):
        decode_image(data[: len(data) // 3])


def test_pixel_limit_rejects_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(RejectedImage, match="above the limit"):
        decode_image(data, max_pixels=1_000_000)


def test_a_local_file_is_read_by_its_open_descriptor_within_max_bytes_and_a_read_error_is_raised(tmp_path):
    """The featurizing job's reader of local files (fruits.model.udf.read_local): the bytes, their hash, the size and
    mtime of the file read; nothing of a file above the cap; no row for a file that is gone or is no regular file; a
    file that cannot be read fails the job (raised), as the JVM's read did."""
    import hashlib

    from fruits.model.udf import read_local

    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"\xff\xd8" + os.urandom(5000))
    found = os.stat(photo)
    read = read_local(f"file:{photo}", max_bytes=found.st_size)
    assert (read.length, read.mtime_ms, read.content) == (found.st_size, found.st_mtime_ns // 1_000_000, photo.read_bytes())
    assert read.sha256 == hashlib.sha256(photo.read_bytes()).hexdigest() and read.error is None
    too_big = read_local(str(photo), max_bytes=found.st_size - 1)
    assert too_big.length == found.st_size and too_big.content is None and too_big.sha256 is None
    assert too_big.error == f"file is {found.st_size} bytes, above the limit of {found.st_size - 1} bytes"
    os.mkfifo(tmp_path / "pipe.jpg")  # would block a plain open
    assert read_local(f"file:{tmp_path / 'gone.jpg'}", 100) is None and read_local(str(tmp_path / "pipe.jpg"), 100) is None
    with pytest.raises(OSError):
        read_local("/proc/self/mem", 100)  # a regular file whose read fails (EIO)
