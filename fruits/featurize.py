"""The featurizing pandas UDF: image bytes -> (features, error). Bad images become an error, never an exception."""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column
from pyspark.sql.functions import pandas_udf

from fruits.images import DEFAULT_MAX_PIXELS, RejectedImage, decode_image
from fruits.model import MobileNetV2Handler, shared_model  # or any handler of fruits.runtimes (same duties)

RESULT_SCHEMA = "features array<float>, error string"


def featurize_contents(
    contents: pd.Series, handler: MobileNetV2Handler, model, max_pixels: int, crash_marker: bytes = b""
) -> pd.DataFrame:
    """Featurize one Arrow batch of image bytes; rows that cannot be decoded get ``error`` and null features.
    ``crash_marker`` (tests only, ``[testing] crash_worker_on_bytes``): the worker process exits at once on a file
    holding these bytes, as a crash in a native decoder would."""
    decoded: list[np.ndarray] = []
    good: list[int] = []
    errors: list[str | None] = [None] * len(contents)
    for row, data in enumerate(contents):
        if crash_marker and data is not None and crash_marker in data:
            os._exit(70)
        try:
            decoded.append(decode_image(data, handler.image_size, max_pixels))
            good.append(row)
        except RejectedImage as exc:
            errors[row] = str(exc)
    features: list[np.ndarray | None] = [None] * len(contents)
    if decoded:
        vectors = handler.run_inference(np.stack(decoded), model)
        for row, vector in zip(good, vectors):
            features[row] = vector
    return pd.DataFrame({"features": features, "error": errors})


def featurize_column(
    content: Column, handler: MobileNetV2Handler, max_pixels: int = DEFAULT_MAX_PIXELS, crash_marker: bytes = b""
) -> Column:
    """A struct column ``(features array<float>, error string)`` computed from a binary ``content`` column."""

    @pandas_udf(RESULT_SCHEMA)
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        model = shared_model(handler)  # built once per Python worker, reused across batches and micro-batches
        for contents in batches:
            yield featurize_contents(contents, handler, model, max_pixels, crash_marker)

    return featurize(content)
