"""The featurizing pandas UDF: image bytes -> (features, error). Bad images become an error, never an exception.

Isolation, image by image: a failure to decode or convert one image quarantines that image (its reason names the
exception); if the model fails on a chunk, each image of it is run alone and only the culprit is quarantined.
Failures that say nothing about an image (out of memory, a model that cannot load or fails on a blank probe image)
are raised: the task fails and is retried, and no image gets a verdict from them.
"""

from __future__ import annotations

import gc
import hashlib
import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType, TimestampType
from pyspark.sql.utils import AnalysisException

from fruits.errors import Failed
from fruits.home.ledger import local_mtime_ms
from fruits.home.uris import glob_escape, local_path
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


def decode_contents(contents: Sequence[bytes | None], image_size: int, max_pixels: int) -> DecodedBatch:
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


Batch = TypeVar("Batch")
Prepared = TypeVar("Prepared")
Output = TypeVar("Output")


def overlapped(batches: Iterator[Batch], prepare: Callable[[Batch], Prepared],
               finish: Callable[[Prepared], Output]) -> Iterator[Output]:
    """``finish(prepare(batch))`` of each batch, in order, with the next batch's ``prepare`` (reading files,
    Pillow's decoding: both release the GIL) in a thread while this one's ``finish`` (inference) runs: the two
    overlap instead of taking turns (``bench/ingest_throughput.py``)."""
    with ThreadPoolExecutor(1, thread_name_prefix="fruits-decode") as preparer:
        ahead: Future[Prepared] | None = None
        for batch in batches:
            following = preparer.submit(prepare, batch)
            if ahead is not None:
                yield finish(ahead.result())
            ahead = following
        if ahead is not None:
            yield finish(ahead.result())


def featurize_batches(
    batches: Iterator[pd.Series], featurizer: Featurizer, model: Any, max_pixels: int
) -> Iterator[pd.DataFrame]:
    """:func:`featurize_contents` over Arrow batches, decoding :func:`overlapped` with inference."""
    return overlapped(batches, lambda contents: decode_contents(contents, featurizer.image_size, max_pixels),
                      lambda decoded: infer_decoded(decoded, featurizer, model))


def feature_bytes(features: Sequence[np.ndarray | None]) -> list[bytes | None]:
    """The UDF's ``features`` values (:data:`RESULT_SCHEMA`): each row's floats as one binary value, None kept."""
    return [None if v is None else np.asarray(v, FEATURE_BYTES).tobytes() for v in features]


def featurize_column(content: Column, featurizer: Featurizer, max_pixels: int = DEFAULT_MAX_PIXELS) -> Column:
    """A struct column ``(features array<float>, error string)`` computed from a binary ``content`` column."""

    @pandas_udf(RESULT_SCHEMA)
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        model = shared_model(featurizer)  # built once per Python worker, reused across batches and micro-batches
        for frame in featurize_batches(batches, featurizer, model, max_pixels):
            yield frame.assign(features=feature_bytes(frame["features"]))

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


@dataclass(frozen=True)
class LocalRead:
    """A local file as a Python worker read it: the size and mtime of the open file (its ``fstat``), its bytes and
    their SHA-256 (None when not read whole), and why not (None when read)."""

    length: int
    mtime_ms: int
    content: bytes | None = None
    sha256: str | None = None
    error: str | None = None


def read_local(path: str, max_bytes: int) -> LocalRead | None:
    """Read the local file at ``path`` (a URI or path as :func:`fruits.home.uris.local_path` takes it) as the
    featurizing job does on a local home; None if there is no regular file there (deleted since the caller looked:
    left out, as ``binaryFile`` under ``spark.sql.files.ignoreMissingFiles`` does, so the caller says "missing").

    The size and mtime come from the open file, so they are those of the bytes read. Never more than ``max_bytes``
    is read: a larger file (one that grew since its ledger row) is not read at all. A file written while it is read
    (its size or mtime moved, or it did not hold the bytes its size said) is not read either; both get their new
    size and mtime, which the driver finds are not the ledger row's version. Any other error (a file the stream may
    not read) is raised: the job fails, as the JVM's read failed it, and the sink finds the file by bisection."""
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not block the worker (it is not a regular file: left out)
        fd = os.open(local_path(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with open(fd, "rb", buffering=0) as file:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return None
        if before.st_size > max_bytes:
            return LocalRead(before.st_size, local_mtime_ms(before),
                             error=f"file is {before.st_size} bytes, above the limit of {max_bytes} bytes")
        parts, wanted = [], before.st_size + 1  # one byte more than its size: a file that grew is seen
        while wanted > 0 and (part := file.read(wanted)):
            parts.append(part)
            wanted -= len(part)
        content = parts[0] if len(parts) == 1 else b"".join(parts)
        after = os.fstat(fd)
    if len(content) != before.st_size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        return LocalRead(after.st_size, local_mtime_ms(after), error="changed while it was read")
    return LocalRead(before.st_size, local_mtime_ms(before), content, hashlib.sha256(content).hexdigest())


# What :func:`featurize_local`'s workers return, in the columns :func:`featurize_files` gives (``result`` nested
# after, in the JVM).
LOCAL_READ_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("length", LongType(), False),
        StructField("mtime_ms", LongType(), False),
        StructField("content_sha256", StringType(), True),
        StructField("features", BinaryType(), True),
        StructField("error", StringType(), True),
    ]
)


def featurize_local(spark: SparkSession, paths: list[str], featurizer: Featurizer, *, max_bytes: int,
                    max_pixels: int, partitions: int) -> DataFrame:
    """:func:`featurize_files`' columns for local files, each read by the Python worker that featurizes it
    (:func:`read_local`) instead of by the JVM: no ``binaryFile`` listing on the driver, no bytes through the JVM,
    the hash in the thread that reads and decodes. The job's input is ``spark.range`` over the paths' indices in
    ``partitions`` even slices (no job, no file index, every core a task); the paths travel with the function (one
    chunk's: ``[stream] max_files_per_trigger`` at most), and each output row carries the path it was given."""
    schema = to_arrow_schema(LOCAL_READ_SCHEMA)

    def prepare(batch: pa.RecordBatch) -> tuple[list[tuple[str, LocalRead]], DecodedBatch]:
        read = [(paths[i], found) for i in batch.column(0).to_pylist()
                if (found := read_local(paths[i], max_bytes)) is not None]
        decoded = decode_contents([found.content for _, found in read], featurizer.image_size, max_pixels)
        for row, (_, found) in enumerate(read):
            if found.error is not None:  # not read whole: no decoding error to report
                decoded.errors[row] = found.error
        return read, decoded

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = shared_model(featurizer)  # built once per Python worker, reused across batches and chunks

        def finish(prepared: tuple[list[tuple[str, LocalRead]], DecodedBatch]) -> pa.RecordBatch:
            read, decoded = prepared
            frame = infer_decoded(decoded, featurizer, model)
            files = [found for _, found in read]
            return pa.RecordBatch.from_arrays([
                pa.array([path for path, _ in read], pa.string()),
                pa.array([found.length for found in files], pa.int64()),
                pa.array([found.mtime_ms for found in files], pa.int64()),
                pa.array([found.sha256 for found in files], pa.string()),
                pa.array(feature_bytes(frame["features"]), pa.binary()),
                pa.array(list(frame["error"]), pa.string()),
            ], schema=schema)

        return overlapped(batches, prepare, finish)

    slices = max(1, min(partitions, len(paths)))
    return spark.range(0, len(paths), 1, slices).mapInArrow(run, LOCAL_READ_SCHEMA).select(
        "path", "length", "mtime_ms", "content_sha256", F.struct("features", "error").alias("result"))


def featurize_paths(spark: SparkSession, paths: list[str], featurizer: Featurizer, *, max_bytes: int,
                    max_pixels: int, partitions: int, still_there: Callable[[str], bool]) -> DataFrame:
    """The one featurizing job of the stream and of a model switch over exactly ``paths`` (each found there just
    before, by the caller), not run yet: ``path``, ``length``, ``mtime_ms``, ``content_sha256`` and ``result``
    (``features`` or an ``error``); a file gone since is absent. Local files are read by the Python workers
    (:func:`featurize_local`); files on a remote store (``s3a://``, ``hdfs://``) by Spark's ``binaryFile``
    (:func:`read_files`, :func:`featurize_files`)."""
    if all(local_path(path) is not None for path in paths):
        return featurize_local(spark, paths, featurizer, max_bytes=max_bytes, max_pixels=max_pixels,
                               partitions=partitions)
    return featurize_files(read_files(spark, paths, still_there=still_there), featurizer, max_pixels, partitions)


def ship_model_files(spark: SparkSession, featurizer: Featurizer) -> None:
    """Weights or IR files of ``featurizer`` to the executors (``SparkContext.addFile``, once per application):
    executors on other machines read their copy through SparkFiles."""
    for path in featurizer.files:
        if not any(added.endswith("/" + os.path.basename(path)) for added in spark.sparkContext.listFiles):
            spark.sparkContext.addFile(path)
