"""The bad-input catalogue, through the real stream: every kind is featurized or quarantined with a specific reason,
and the stream goes on."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import local_path, make_config, sample_files

pytestmark = pytest.mark.slow

MAX_BYTES = 3_000_000


def photo(label: str = "Banana", index: int = 0) -> Image.Image:
    return Image.open(sample_files(label, index + 1)[index]).convert("RGB")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")


def catalogue() -> tuple[dict[str, bytes], dict[str, bytes], dict[str, str], dict[str, bytes]]:
    """(featurized files, quarantined files, expected reason fragments, never-read files), relative paths -> bytes."""
    banana = photo()
    wide = photo("Kiwi").crop((0, 15, 100, 85))  # 100x70: orientation matters
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    rotated_jpeg = encode(wide, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    upright_pixels = Image.open(io.BytesIO(rotated_jpeg)).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    palette = banana.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    sixteen = Image.fromarray(np.asarray(banana.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    jpeg = encode(banana, "JPEG", quality=92)

    good = {
        "kinds/gray.jpg": encode(banana.convert("L"), "JPEG"),
        "kinds/cmyk.jpg": encode(banana.convert("CMYK"), "JPEG"),
        "kinds/rgba.png": encode(banana.convert("RGBA"), "PNG"),
        "kinds/palette transparent.png": encode(palette, "PNG", transparency=0),
        "kinds/sixteen bit.png": encode(sixteen, "PNG"),
        "kinds/progressive.jpg": encode(banana, "JPEG", progressive=True),
        "kinds/UPPER.JPG": jpeg,
        "kinds/UPPER2.JPEG": jpeg,
        "kinds/png named.jpg": encode(banana, "PNG"),
        "kinds/one pixel.png": encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "kinds/big 4000x3000.jpg": encode(banana.resize((4000, 3000)), "JPEG", quality=85),
        "kinds/phone.heic": encode(banana, "HEIF"),
        "orientation/rotated.jpg": rotated_jpeg,
        "orientation/upright.png": encode(upright_pixels, "PNG"),
        "orientation/raw.png": encode(Image.open(io.BytesIO(rotated_jpeg)).convert("RGB"), "PNG"),
        "deep/er/still deeper/Kiwi #2 50% ?ü/kiwi #1 ?ü.jpg": jpeg,
    }
    bad = {
        "bad/truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad/empty.jpg": b"",
        "bad/random.jpg": np.random.default_rng(0).bytes(5000),
        "bad/page.jpg": b"<!doctype html><html><body><h1>Not found</h1></body></html>",
        "bad/bomb.png": png_declaring(30000, 30000),
        "bad/too big.jpg": jpeg + b"\x00" * (MAX_BYTES + 1),
    }
    reasons = {
        "bad/truncated.jpg": "truncated",
        "bad/empty.jpg": "empty file (0 bytes)",
        "bad/random.jpg": "not a recognised image format",
        "bad/page.jpg": "not a recognised image format",
        "bad/bomb.png": "declares 30000x30000 = 900000000 pixels, above the limit",
        "bad/too big.jpg": f"above the limit of {MAX_BYTES} bytes",
    }
    never = {name: jpeg for name in ["skip/.hidden.jpg", "skip/x.jpg.part", "skip/x.tmp", "skip/x.crdownload", "skip/~x.jpg", "skip/.~lock.jpg"]}
    return good, bad, reasons, never


@pytest.fixture(scope="module")
def streamed(spark, weights, tmp_path_factory):
    from fruits.streaming.ingest import run_stream

    home = tmp_path_factory.mktemp("bad-input-home")
    good, bad, reasons, never = catalogue()
    for relative, data in {**good, **bad, **never}.items():
        target = home / "landing" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    config = make_config(home, model={"max_bytes": MAX_BYTES})
    run_stream(spark, config, weights, available_now=True)
    landing = str(home / "landing") + "/"

    def relative(df):
        return [local_path(p)[len(landing) :] for p in df["path"]]

    features = spark.read.format("delta").load(config.features_table).toPandas()
    quarantine = spark.read.format("delta").load(config.quarantine_table).toPandas()
    features["relative"], quarantine["relative"] = relative(features), relative(quarantine)
    return {"good": good, "bad": bad, "reasons": reasons, "features": features.set_index("relative"), "quarantine": quarantine.set_index("relative")}


def test_every_readable_kind_is_featurized_once(streamed):
    assert sorted(streamed["features"].index) == sorted(streamed["good"])
    assert {len(v) for v in streamed["features"]["features"]} == {1280}


def test_every_bad_kind_is_quarantined_once_with_its_specific_reason(streamed):
    quarantine = streamed["quarantine"]
    assert sorted(quarantine.index) == sorted(streamed["bad"])
    for relative, fragment in streamed["reasons"].items():
        assert fragment in quarantine.loc[relative, "reason"], (relative, quarantine.loc[relative, "reason"])
    assert quarantine.loc["bad/too big.jpg", "size_bytes"] > MAX_BYTES


def test_odd_names_and_deep_nesting_keep_their_label(streamed):
    assert streamed["features"].loc["deep/er/still deeper/Kiwi #2 50% ?ü/kiwi #1 ?ü.jpg", "label"] == "Kiwi #2 50% ?ü"


def test_exif_rotated_jpeg_gives_the_features_of_the_upright_image(streamed):
    features = streamed["features"]["features"]
    rotated, upright, raw = (np.asarray(features[f"orientation/{n}"]) for n in ("rotated.jpg", "upright.png", "raw.png"))
    assert np.abs(rotated - upright).max() <= 1e-4
    assert np.abs(rotated - raw).max() > 0.05  # without applying the EXIF orientation the features differ


def test_same_image_in_other_encodings_gives_close_features(streamed):
    features = streamed["features"]["features"]

    def cosine(a: str, b: str) -> float:
        x, y = np.asarray(features[a]), np.asarray(features[b])
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    assert np.array_equal(features["kinds/UPPER.JPG"], features["kinds/UPPER2.JPEG"])
    for other in ["kinds/png named.jpg", "kinds/progressive.jpg", "kinds/rgba.png", "kinds/phone.heic"]:
        assert cosine("kinds/UPPER.JPG", other) > 0.97, other
