"""The featurizing pandas UDF: image bytes -> (features, error). Bad images become an error, never an exception.

Isolation, image by image: a failure to decode or convert one image quarantines that image (its reason names the
exception); if the model fails on a chunk, each image of it is run alone and only the culprit is quarantined.
Failures that say nothing about an image (out of memory, a model that cannot load or fails on a blank probe image)
are raised: the task fails and is retried, and no image gets a verdict from them.
"""

from __future__ import annotations

import gc
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType, TimestampType
from pyspark.sql.utils import AnalysisException

from fruits.errors import Failed
from fruits.home.uris import glob_escape
from fruits.model.images import DEFAULT_MAX_PIXELS, TRANSIENT, RejectedImage, decode_image
from fruits.model.featurizer import Featurizer, shared_model

# The UDF's column: each row's 1,280 float32 as one little-endian binary value (null for a row with an error), and
# the error. One binary value crosses Python -> JVM -> driver as one copy, where an array<float> is converted element
# by element at each step (bench/ingest_throughput.py); the driver turns the column back into floats
# (:func:`features_list`), and the tables store array<float>.
RESULT_SCHEMA = "features binary, error string"
FEATURE_BYTES = np.dtype("<f4")


class ModelFailure(Failed):
    """The model fails on a blank image too: the fault is the model's or the worker's, not the images'."""


def decode_isolated(data: bytes | None, size: int, max_pixels: int) -> np.ndarray:
    """:func:`decode_image`, tried once more after freeing memory if it ran out (a transient failure is never the
    image's verdict; a second one is raised)."""
    try:
        return decode_image(data, size, max_pixels)
    except TRANSIENT:
        gc.collect()
        return decode_image(data, size, max_pixels)


def _model_works(featurizer: Featurizer, model: Any) -> bool:
    """Whether the model still runs on a blank image (then a failure on a given image is that image's fault)."""
    try:
        featurizer.run_inference(np.zeros((1, featurizer.image_size, featurizer.image_size, 3), dtype=np.uint8), model)
        return True
    except Exception:
        return False


def infer_isolated(featurizer: Featurizer, model: Any, images: list[np.ndarray]) -> list[np.ndarray | str]:
    """Features of each image, or the reason its inference failed.

    The images run as one batch; if that fails, each runs alone. An image that fails alone, while the model still
    runs on a blank image, gets ``"inference failed: <type>: <message>"``. Raises :class:`ModelFailure` if the model
    fails on the blank image too, and any :data:`~fruits.model.images.TRANSIENT` error of a single image.
    """
    try:
        return list(featurizer.run_inference(np.stack(images), model))
    except Exception:  # includes MemoryError: one image at a time needs far less memory
        pass
    results: list[np.ndarray | str] = []
    model_ok: bool | None = None
    for image in images:
        try:
            results.append(featurizer.run_inference(image[None], model)[0])
        except TRANSIENT:
            raise
        except Exception as exc:
            if model_ok is None:
                model_ok = _model_works(featurizer, model)
            if not model_ok:
                raise ModelFailure(f"the model fails on a blank image too: {type(exc).__name__}: {exc}") from exc
            results.append(f"inference failed: {type(exc).__name__}: {exc}")
    return results


@dataclass
class DecodedBatch:
    """One Arrow batch after decoding: the images that decoded, their rows, and each row's error so far."""

    images: list[np.ndarray]
    rows: list[int]
    errors: list[str | None]


def decode_contents(contents: pd.Series, image_size: int, max_pixels: int) -> DecodedBatch:
    """Decode one Arrow batch of image bytes; a row that cannot be decoded gets its ``error``."""
    decoded = DecodedBatch([], [], [None] * len(contents))
    for row, data in enumerate(contents):
        try:
            decoded.images.append(decode_isolated(data, image_size, max_pixels))
            decoded.rows.append(row)
        except RejectedImage as exc:
            decoded.errors[row] = exc.reason
    return decoded


def infer_decoded(decoded: DecodedBatch, featurizer: Featurizer, model: Any) -> pd.DataFrame:
    """The UDF's output for one decoded batch: features, or the reason a row has none."""
    errors = list(decoded.errors)
    features: list[np.ndarray | None] = [None] * len(errors)
    if decoded.images:
        for row, outcome in zip(decoded.rows, infer_isolated(featurizer, model, decoded.images)):
            if isinstance(outcome, str):
                errors[row] = outcome
            else:
                features[row] = outcome
    return pd.DataFrame({"features": features, "error": errors})


def featurize_contents(contents: pd.Series, featurizer: Featurizer, model: Any, max_pixels: int) -> pd.DataFrame:
    """Featurize one Arrow batch of image bytes; rows that cannot be decoded or inferred get ``error`` and null
    features."""
    return infer_decoded(decode_contents(contents, featurizer.image_size, max_pixels), featurizer, model)


def featurize_batches(
    batches: Iterator[pd.Series], featurizer: Featurizer, model: Any, max_pixels: int
) -> Iterator[pd.DataFrame]:
    """:func:`featurize_contents` over Arrow batches, in order, with the next batch's decoding (Pillow, which
    releases the GIL) in a thread while this one's inference runs: the two overlap instead of taking turns
    (``bench/ingest_throughput.py``)."""
    with ThreadPoolExecutor(1, thread_name_prefix="fruits-decode") as decoder:
        ahead: Future[DecodedBatch] | None = None
        for contents in batches:
            following = decoder.submit(decode_contents, contents, featurizer.image_size, max_pixels)
            if ahead is not None:
                yield infer_decoded(ahead.result(), featurizer, model)
            ahead = following
        if ahead is not None:
            yield infer_decoded(ahead.result(), featurizer, model)


def featurize_column(content: Column, featurizer: Featurizer, max_pixels: int = DEFAULT_MAX_PIXELS) -> Column:
    """A struct column ``(features array<float>, error string)`` computed from a binary ``content`` column."""

    @pandas_udf(RESULT_SCHEMA)
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        model = shared_model(featurizer)  # built once per Python worker, reused across batches and micro-batches
        for frame in featurize_batches(batches, featurizer, model, max_pixels):
            yield frame.assign(features=[None if v is None else np.asarray(v, FEATURE_BYTES).tobytes()
                                         for v in frame["features"]])

    return featurize(content)


def features_list(result: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The ``features`` of collected UDF results (:func:`featurize_column`'s struct, through Arrow) as Arrow
    ``list<float>``: each binary value read as float32 without a copy per row; null stays null."""
    binary = pc.struct_field(result, "features")
    binary = binary.combine_chunks() if isinstance(binary, pa.ChunkedArray) else binary
    binary = binary.cast(pa.binary())  # offsets as int32, whatever Arrow type Spark sent
    _, offsets, data = binary.buffers()
    ends = np.frombuffer(offsets, np.int32, len(binary) + 1, binary.offset * 4)
    values = np.frombuffer(data, FEATURE_BYTES, (ends[-1] - ends[0]) // 4, ends[0]) if data is not None and ends[-1] > ends[0] else np.zeros(0, FEATURE_BYTES)
    return pa.ListArray.from_arrays(pa.array((ends - ends[0]) // 4, pa.int32()), pa.array(values, pa.float32()),
                                    mask=pc.is_null(binary))


# The binaryFile source's schema, given explicitly so Spark never has to infer it.
BINARY_FILE_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("modificationTime", TimestampType(), False),
        StructField("length", LongType(), False),
        StructField("content", BinaryType(), True),
    ]
)


def read_files(spark: SparkSession, paths: list[str], *, still_there: Callable[[str], bool]) -> DataFrame:
    """``binaryFile`` over exactly ``paths`` (each found there just before, by the caller). A file deleted between
    that look and Spark's listing fails it with PATH_NOT_FOUND: the paths ``still_there`` says are gone are then left
    out, up to three times; the caller tells the missing ones by their absence from the result."""
    for _ in range(3):
        if not paths:
            break
        try:
            return spark.read.format("binaryFile").schema(BINARY_FILE_SCHEMA).load([glob_escape(p) for p in paths])
        except AnalysisException as exc:  # PATH_NOT_FOUND: deleted between our check and Spark's
            if exc.getCondition() != "PATH_NOT_FOUND":
                raise
            paths = [p for p in paths if still_there(p)]
    return spark.createDataFrame([], BINARY_FILE_SCHEMA)


def featurize_files(content: DataFrame, featurizer: Featurizer, max_pixels: int, partitions: int) -> DataFrame:
    """``binaryFile`` rows -> path, ``length``, ``mtime_ms``, ``content_sha256`` and ``result`` (``features`` or an
    ``error``), featurized on the executors in ``partitions`` tasks: the stream's and the switch's one job."""
    return content.coalesce(partitions).select(
        "path",
        "length",
        F.unix_millis("modificationTime").alias("mtime_ms"),
        F.sha2("content", 256).alias("content_sha256"),
        featurize_column(F.col("content"), featurizer, max_pixels).alias("result"),
    )


def ship_model_files(spark: SparkSession, featurizer: Featurizer) -> None:
    """Weights or IR files of ``featurizer`` to the executors (``SparkContext.addFile``, once per application):
    executors on other machines read their copy through SparkFiles."""
    for path in featurizer.files:
        if not any(added.endswith("/" + os.path.basename(path)) for added in spark.sparkContext.listFiles):
            spark.sparkContext.addFile(path)
