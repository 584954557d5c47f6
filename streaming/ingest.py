"""``fruits stream``: landing folder -> binaryFile stream -> MobileNetV2 features -> Delta (features | quarantine).

Read top to bottom: :func:`start_stream` is the whole query. Each micro-batch is written by :class:`DeltaSink` to two
Delta tables with idempotent appends (``txnAppId`` + ``txnVersion = batch_id``), so a micro-batch replayed after a
crash is never written twice; the checkpoint makes the file source exactly-once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener
from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType, TimestampType

from fruits import storage
from fruits.config import Config, parse_duration
from fruits.featurize import featurize_column
from fruits.model import WeightsRef
from fruits.runtimes import make_handler
from fruits.tables import FEATURES_SCHEMA, QUARANTINE_SCHEMA, ensure_table

log = logging.getLogger("fruits.stream")

# The binaryFile source's schema, given explicitly so the stream never has to infer it.
BINARY_FILE_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("modificationTime", TimestampType(), False),
        StructField("length", LongType(), False),
        StructField("content", BinaryType(), True),
    ]
)


def image_glob(extensions: list[str]) -> str:
    """A Hadoop glob for file names with one of ``extensions`` in any case, not starting with ``.``, ``_`` or ``~``.

    ``["jpg", "png"]`` -> ``[!._~]*.{[jJ][pP][gG],[pP][nN][gG]}``. Temporary names (``x.part``, ``x.tmp``,
    ``x.crdownload``) never match; Spark itself also skips names starting with ``.`` or ``_``.
    """
    def any_case(ext: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext.lstrip("."))

    return "[!._~]*.{" + ",".join(any_case(ext) for ext in extensions) + "}"


def label_column(path: Column, landing_root: str) -> Column:
    """Name of the file's parent folder below ``landing_root`` (as Spark spells paths); null for files in the root."""
    prefix = landing_root.rstrip("/") + "/"
    relative = F.when(path.startswith(prefix), path.substr(len(prefix) + 1, 1 << 30))
    return F.when(F.instr(relative, "/") > 0, F.element_at(F.split(relative, "/"), -2))


def source_batches(spark: SparkSession, checkpoint: str, batch_id: int) -> range:
    """The file source's own batch ids that micro-batch ``batch_id`` read (from the checkpoint's offset log).

    They are usually just ``batch_id``, but not after a crash between the source's log write and the offset log's:
    the source's batch stays in its log, and the next micro-batch reads it together with a new one (offsets/N holds
    ``{"logOffset": K}``, the last source batch included; the previous micro-batch's ends where this one starts).
    """

    def log_offset(batch: int) -> int:
        lines = storage.read_bytes(spark, f"{checkpoint}/offsets/{batch}").decode().strip().splitlines()
        return int(json.loads(lines[-1])["logOffset"])  # one source: its offset is the last line

    end = log_offset(batch_id)
    start = log_offset(batch_id - 1) if batch_id > 0 and storage.exists(spark, f"{checkpoint}/offsets/{batch_id - 1}") else end - 1
    return range(start + 1, end + 1)


def source_log_entries(spark: SparkSession, source_log: str, source_batch: int) -> dict[str, int]:
    """The files the file source listed in its batch ``source_batch`` (path as the ``path`` column spells it ->
    mtime in ms). Read from the source's own log in the checkpoint (``sources/0/N``, or ``N.compact`` every tenth).
    """
    name = next(
        (n for n in (str(source_batch), f"{source_batch}.compact") if storage.exists(spark, f"{source_log}/{n}")), None
    )
    if name is None:
        return {}
    marker = f'"batchId":{source_batch}}}'
    if name.endswith(".compact"):  # every file since the start: filter it with a Spark job, not on the driver
        lines = [
            row["value"]
            for row in spark.read.text(f"{source_log}/{name}").where(F.col("value").contains(marker)).collect()
        ]
    else:  # this batch's files only: read it directly, no Spark job
        lines = [line for line in storage.read_bytes(spark, f"{source_log}/{name}").decode().splitlines() if marker in line]
    entries = {}
    for line in lines:
        entry = json.loads(line)
        # The log holds URIs (file:///a/b%20c.jpg); the path column holds Hadoop's Path.toString (file:/a/b c.jpg).
        path = re.sub(r"^file:///", "file:/", unquote(entry["path"]))
        entries[path] = int(entry["timestamp"])
    return entries


@dataclass
class DeltaSink:
    """``foreachBatch`` writer: decoded rows to the features table, rejected rows to the quarantine table.

    Files the source listed but that gave no row are quarantined too: Spark's file scan skips 0-byte files, and
    (with ``spark.sql.files.ignoreMissingFiles``) files deleted between listing and reading. No file is lost silently.
    """

    features_table: str
    quarantine_table: str
    app_id: str
    checkpoint: str
    landing_root: str
    model_id: str

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        batch.persist()
        try:
            # One job over every partition at once featurizes the whole batch into the cache and tells which paths
            # were read and which failed. (An isEmpty() first would featurize partition 0 alone, on one core.)
            ok = F.col("error").isNull()
            outcome = batch.select("path", ok.alias("ok")).collect()
            unread = self._unread(batch.sparkSession, batch_id, {row["path"] for row in outcome})
            common = ["path", "label", "content_sha256", "size_bytes", "modified_at", "ingested_at"]
            if any(row["ok"] for row in outcome):
                self._append(batch.where(ok).select(*common, "features", "model_id"), self.features_table, batch_id)
            if unread is not None or not all(row["ok"] for row in outcome):
                rejected = batch.where(~ok).select(*common, F.col("error").alias("reason"), "model_id")
                if unread is not None:
                    rejected = rejected.unionByName(unread)
                self._append(rejected, self.quarantine_table, batch_id)
        finally:
            batch.unpersist()

    def _unread(self, spark: SparkSession, batch_id: int, read: set[str]) -> DataFrame | None:
        """Quarantine rows for the files listed for this batch that produced no row (None if there are none)."""
        listed = {}
        for source_batch in source_batches(spark, self.checkpoint, batch_id):
            listed.update(source_log_entries(spark, f"{self.checkpoint}/sources/0", source_batch))
        rows = []
        for path, modified_ms in sorted(listed.items()):
            if path in read:
                continue
            size = storage.file_length(spark, path)
            reason = {None: "file disappeared before it was read", 0: "empty file (0 bytes)"}.get(
                size, "listed by the stream but produced no row"
            )
            rows.append((path, size or 0, modified_ms, reason))
        if not rows:
            return None
        return spark.createDataFrame(rows, "path string, size_bytes long, modified_ms long, reason string").select(
            "path",
            label_column(F.col("path"), self.landing_root).alias("label"),
            F.lit(None).cast("string").alias("content_sha256"),
            "size_bytes",
            F.timestamp_millis("modified_ms").alias("modified_at"),
            F.current_timestamp().alias("ingested_at"),
            "reason",
            F.lit(self.model_id).alias("model_id"),
        )

    def _append(self, rows: DataFrame, table: str, batch_id: int) -> None:
        # txnAppId/txnVersion make the append idempotent: Delta skips a batch id it has already committed.
        (
            rows.write.format("delta")
            .mode("append")
            .option("txnAppId", self.app_id)
            .option("txnVersion", batch_id)
            .save(table)
        )


@dataclass
class ProgressLogger(StreamingQueryListener):
    """Logs one line per micro-batch that read files: how many, how fast, how long."""

    query_name: str
    spark: SparkSession | None = None
    progress_file: str | None = None  # where the last batch's figures go, for `fruits status`
    files: int = 0
    last_batch_id: int = -1

    def onQueryStarted(self, event) -> None:
        pass

    def onQueryProgress(self, event) -> None:
        progress = event.progress
        if progress.name != self.query_name:
            return
        try:
            self._on_progress(progress)
        finally:  # last: run_stream waits for this, so the batch's line is out before the command returns
            self.last_batch_id = progress.batchId

    def _on_progress(self, progress) -> None:
        if not progress.numInputRows:
            return
        seconds = progress.durationMs.get("triggerExecution", 0) / 1000
        self.files += progress.numInputRows
        if self.spark is not None and self.progress_file:
            figures = {
                "batch": progress.batchId, "files": progress.numInputRows, "seconds": seconds,
                "images_per_s": round(progress.numInputRows / seconds, 1) if seconds else None,
                "files_since_start": self.files, "at": progress.timestamp, "query_id": str(progress.id),
            }
            try:
                storage.write_text(self.spark, self.progress_file, json.dumps(figures))
            except Exception as exc:  # status figures are a convenience: never let them disturb the stream
                log.warning("could not write %s: %s", self.progress_file, exc)
        log.info(
            "batch %d: %d files in %.2f s (%.1f images/s); %d files since start",
            progress.batchId,
            progress.numInputRows,
            seconds,
            progress.numInputRows / seconds if seconds else 0.0,
            self.files,
        )

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        pass


def start_stream(spark: SparkSession, config: Config, weights: WeightsRef, available_now: bool = False) -> StreamingQuery:
    """Start the ingestion query over ``config.landing``; returns the running :class:`StreamingQuery`."""
    stream_cfg, model_cfg = config.section("stream"), config.section("model")
    landing = storage.qualify(spark, config.landing)
    storage.mkdirs(spark, landing)
    ensure_table(spark, config.features_table, FEATURES_SCHEMA, "MobileNetV2 features of landed images", change_feed=True)
    ensure_table(spark, config.quarantine_table, QUARANTINE_SCHEMA, "Landed files that could not be featurized")
    checkpoint = config.checkpoint("ingest")

    handler = make_handler(config, weights)  # [model] runtime/precision; converts the Keras model once if needed
    log.info("featurizer %s", handler.model_id)
    for path in handler.files:  # weights or IR: executors on other machines read their copy via SparkFiles
        if not any(added.endswith("/" + os.path.basename(path)) for added in spark.sparkContext.listFiles):
            spark.sparkContext.addFile(path)
    partitions = int(stream_cfg.get("partitions") or 0) or spark.sparkContext.defaultParallelism

    images = (
        spark.readStream.format("binaryFile")
        .schema(BINARY_FILE_SCHEMA)
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", image_glob(list(stream_cfg["extensions"])))
        .option("maxFilesPerTrigger", int(stream_cfg["max_files_per_trigger"]))
        .load(landing)
    )
    max_bytes = int(model_cfg["max_bytes"])
    too_big = F.col("length") > max_bytes  # such bytes never reach Python
    featurized = (
        images.coalesce(partitions)
        .select(
            "path",
            label_column(F.col("path"), landing).alias("label"),
            F.sha2("content", 256).alias("content_sha256"),
            F.col("length").alias("size_bytes"),
            F.col("modificationTime").alias("modified_at"),
            F.current_timestamp().alias("ingested_at"),
            featurize_column(F.when(~too_big, F.col("content")), handler, int(model_cfg["max_pixels"])).alias("result"),
            F.when(too_big, F.format_string(f"file is %d bytes, above the limit of {max_bytes} bytes", "length"))
            .alias("size_error"),
            F.lit(handler.model_id).alias("model_id"),
        )
        .withColumns(
            {"features": F.col("result.features"), "error": F.coalesce("size_error", "result.error")}
        )
        .drop("result", "size_error")
    )
    sink = DeltaSink(
        config.features_table,
        config.quarantine_table,
        app_id="fruits-ingest-" + hashlib.sha256(checkpoint.encode()).hexdigest()[:16],
        checkpoint=checkpoint,
        landing_root=landing,
        model_id=handler.model_id,
    )
    writer = (
        featurized.writeStream.queryName(str(stream_cfg["query_name"]))
        .option("checkpointLocation", checkpoint)
        .foreachBatch(sink)
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{int(parse_duration(stream_cfg['trigger']) * 1000)} milliseconds")
    return writer.start()


def run_stream(spark: SparkSession, config: Config, weights: WeightsRef, available_now: bool = False) -> int:
    """Run the stream until it ends (``available_now``) or SIGTERM / Ctrl-C stops it; returns the files it read."""
    progress = ProgressLogger(str(config.section("stream")["query_name"]), spark, config.stream_progress)
    spark.streams.addListener(progress)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    query = start_stream(spark, config, weights, available_now)
    log.info("stream %s watching %s (checkpoint %s)", query.name, config.landing, config.checkpoint("ingest"))
    try:
        while query.isActive and not stop.is_set():
            query.awaitTermination(0.5)
        if stop.is_set():
            log.info("stop requested: stopping the stream (the checkpoint keeps its place)")
            query.stop()
        if query.exception() is not None:
            raise RuntimeError(f"stream failed: {query.exception()}")
        # Listener events arrive asynchronously: wait (briefly) for the last batch's before counting.
        last = query.lastProgress
        deadline = time.monotonic() + 5
        while last and progress.last_batch_id < last["batchId"] and time.monotonic() < deadline:
            time.sleep(0.05)
        return progress.files
    finally:
        spark.streams.removeListener(progress)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
