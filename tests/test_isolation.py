"""Per-image isolation: one image that breaks decoding, conversion or inference is quarantined alone, with the
exception's type and message; failures that are not the image's (out of memory, a broken or unloadable model) are
raised, never turned into a verdict."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import local_path, make_config, place, sample_files
from fruits.model.udf import ModelFailure, featurize_contents
from fruits.model.images import RejectedImage, decode_image
from fruits.model.featurizer import shared_model
from fruits.model.keras import KerasFeaturizer

POISON = 13  # grey level of the image FaultyModel fails on


def png_with_zero_exif() -> bytes:
    """A 64x64 PNG whose EXIF block is 8 zero bytes: Pillow loads it, ``ImageOps.exif_transpose`` raises."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG", exif=b"\x00" * 8)
    return buffer.getvalue()


def solid_png(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (level, level, level)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def featurizer(weights):
    return KerasFeaturizer(weights, batch_size=4)


@pytest.fixture(scope="module")
def model(featurizer):
    return featurizer.load_model()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [p.read_bytes() for p in sample_files("Banana", 6) + sample_files("Lemon", 6)]


@dataclass(frozen=True)
class FaultyFeaturizer:
    """Fault injection around the real featurizer: the real model, except that a batch holding an image of uniform
    grey ``POISON`` raises (``broken``: every batch raises ``error``)."""

    inner: KerasFeaturizer
    error: type[BaseException] = ValueError
    broken: bool = False

    @property
    def image_size(self) -> int:
        return self.inner.image_size

    def run_inference(self, images: np.ndarray, model: Any) -> np.ndarray:
        if self.broken or any((image == POISON).all() for image in images):
            raise self.error("injected inference failure")
        return self.inner.run_inference(images, model)


def test_exif_transpose_failure_is_a_rejection_with_the_exception_type():
    with pytest.raises(RejectedImage, match=r"^cannot decode image: SyntaxError: not a TIFF file"):
        decode_image(png_with_zero_exif())


def test_a_bad_png_among_real_photos_is_quarantined_alone(featurizer, model, photos):
    frame = featurize_contents(pd.Series(photos + [png_with_zero_exif()]), featurizer, model, 50_000_000)
    assert frame["error"][:12].isna().all() and frame["error"][12].startswith("cannot decode image: SyntaxError")
    expected = featurizer.run_inference(np.stack([decode_image(p) for p in photos]), model)
    assert np.abs(np.stack(frame["features"][:12]) - expected).max() <= 1e-4
    assert frame["features"][12] is None


def test_an_inference_failure_quarantines_only_the_culprit_of_the_chunk(featurizer, model, photos):
    faulty = FaultyFeaturizer(featurizer)
    contents = photos[:5] + [solid_png(POISON)] + photos[5:8]
    frame = featurize_contents(pd.Series(contents), faulty, model, 50_000_000)
    assert list(frame["error"].isna()) == [True] * 5 + [False] + [True] * 3
    assert frame["error"][5] == "inference failed: ValueError: injected inference failure"
    expected = featurizer.run_inference(np.stack([decode_image(p) for p in photos[:8]]), model)
    got = np.stack([v for v in frame["features"] if v is not None])
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("error,raised", [(RuntimeError, ModelFailure), (MemoryError, MemoryError)])
def test_failures_that_are_not_the_images_are_raised_never_quarantined(featurizer, model, photos, error, raised):
    with pytest.raises(raised):
        featurize_contents(pd.Series(photos[:3]), FaultyFeaturizer(featurizer, error, broken=True), model, 50_000_000)


@dataclass(frozen=True)
class FlakyLoader:
    """The real featurizer, whose ``load_model`` fails the first ``failures`` calls (counted in ``calls``)."""

    inner: KerasFeaturizer
    failures: int
    calls: list = None  # type: ignore[assignment]

    def __hash__(self) -> int:
        return id(self)

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    def load_model(self) -> Any:
        self.calls.append(1)
        if len(self.calls) <= self.failures:
            raise OSError("injected: weights not there yet")
        return self.inner.load_model()


def test_a_model_that_fails_to_load_is_retried_and_a_lasting_failure_is_raised_uncached(featurizer):
    flaky = FlakyLoader(featurizer, failures=2, calls=[])
    model = shared_model(flaky, attempts=3, backoff_seconds=0)
    assert len(flaky.calls) == 3 and shared_model(flaky) is model  # loaded on the third try, then cached
    broken = FlakyLoader(featurizer, failures=99, calls=[])
    for _ in range(2):
        with pytest.raises(OSError, match="weights not there yet"):
            shared_model(broken, attempts=2, backoff_seconds=0)
    assert len(broken.calls) == 4  # nothing cached: each call tried again


@pytest.mark.slow
def test_the_stream_quarantines_the_bad_png_and_featurizes_the_12_photos(spark, weights, tmp_path):
    """Issue 11's reproduction, through the real stream: 12 real photos and one PNG whose EXIF is 8 zero bytes."""
    from fruits.streaming.ingest import run_stream

    landing = tmp_path / "landing"
    good = place(sample_files("Banana", 6), landing / "Banana") + place(sample_files("Lemon", 6), landing / "Lemon")
    (landing / "Lemon" / "zero-exif.png").write_bytes(png_with_zero_exif())
    config = make_config(tmp_path)
    assert run_stream(spark, config, weights, available_now=True) == 13
    features = spark.read.format("delta").load(config.features_table).toPandas()
    quarantine = spark.read.format("delta").load(config.quarantine_table).toPandas()
    assert sorted(local_path(p) for p in features["path"]) == sorted(str(p) for p in good)
    assert [local_path(p) for p in quarantine["path"]] == [str(landing / "Lemon" / "zero-exif.png")]
    assert quarantine["reason"][0].startswith("cannot decode image: SyntaxError: not a TIFF file")
    assert quarantine["label"][0] == "Lemon"
