"""Faults the tests inject into the real stream through its parameters (never through the shipped config).

:class:`CrashingFeaturizer` wraps the real featurizer and is passed to ``run_stream(..., featurizer=...)``: in the
Spark Python worker, a batch holding an image of the uniform colour :data:`CRASH_RGB` ends the worker process at once
(``os._exit``), as a crash in native code would; every other batch gets the real features.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark import cloudpickle

from fruits.model.featurizer import Featurizer

# Spark's Python workers cannot import this module (tests/ is on the driver's sys.path only): its classes travel with
# the UDF by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CRASH_RGB = (3, 141, 59)  # no real photo is one flat colour; the sink's probe image is (200, 40, 40)
CRASH_EXIT_CODE = 70


def crash_png(size: int = 16) -> bytes:
    """A small valid PNG of the colour :class:`CrashingFeaturizer` dies on (one flat colour stays flat when resized)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), CRASH_RGB).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class CrashingFeaturizer:
    """The real featurizer ``inner``, except that its worker process exits at once on an image of :data:`CRASH_RGB`.
    Frozen and hashable: the worker keeps one model for it (:func:`fruits.model.featurizer.shared_model`)."""

    inner: Featurizer

    @property
    def image_size(self) -> int:
        return self.inner.image_size

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def files(self) -> list[str]:
        return self.inner.files

    def load_model(self) -> Any:
        return self.inner.load_model()

    def run_inference(self, images: np.ndarray, model: Any) -> np.ndarray:
        if (images == np.array(CRASH_RGB, dtype=images.dtype)).all(axis=(1, 2, 3)).any():
            os._exit(CRASH_EXIT_CODE)
        return self.inner.run_inference(images, model)
