"""The stream's ``foreachBatch`` sink: ledger rows in, exactly one outcome row out for each (features | quarantine).

For each micro-batch of ledger rows:

1. **Already decided?** The ``file_id`` values that already have an outcome row are dropped. The lookup reads only
   the outcome rows discovered in the batch's time range (Delta data skipping on ``discovered_at``), so it stays cheap
   as the tables grow. This check, not the checkpoint, makes the sink idempotent: a replay after a crash, a deleted or
   new checkpoint, or other batch boundaries never write a second outcome for a file version.
2. **Featurize** the rest in chunks of ``[stream] max_files_per_trigger``: one Spark job reads exactly those paths
   (``binaryFile``) and the pandas UDF featurizes them; its rows are collected through Arrow and appended from the
   driver, one delta-rs commit per table and chunk (:mod:`fruits.streaming.outcomes`). A ledger row whose file is
   gone, empty, or no longer the version the ledger recorded gets a quarantine row saying so.
3. **After ingest**: once a chunk's outcomes are committed, its files are archived (or deleted, or kept:
   ``[discovery] after_ingest``), so the landing folder only holds the backlog.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import reduce
from typing import Any, Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType, TimestampType
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from py4j.protocol import Py4JJavaError
from pyspark.errors import PythonException
from pyspark.sql.utils import AnalysisException

from fruits import storage
from fruits.appends import AppendTarget
from fruits.featurize import featurize_column
from fruits.featurizer import Featurizer
from fruits.names import ALIAS_FOLDER, alias_path, local_bytes, needs_alias, temporary_name
from fruits.uris import glob_escape, local_path, rust_uri
from fruits.streaming.outcomes import append, epoch_ms, featurized_rows, quarantine_rows, split_featurized
from fruits.streaming.progress import Progress

log = logging.getLogger("fruits.stream")

# The binaryFile source's schema, given explicitly so Spark never has to infer it.
BINARY_FILE_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("modificationTime", TimestampType(), False),
        StructField("length", LongType(), False),
        StructField("content", BinaryType(), True),
    ]
)
LEDGER_COLUMNS = [
    "file_id", "path", "label", "size_bytes", "modified_at", "discovered_at", "discovered_by", "overwrites", "raw_path",
]
# `fruits drop`, `fruits stage` and web uploads record a file in the ledger just before they make it visible (a rename;
# on S3, its PUT, one after another for a group of 500): a row of theirs whose file is not there yet is waited for, up
# to this long after its discovery, before it is quarantined as gone.
RECORDED_FIRST = ("drop", "stage", "upload")
PUBLISH_GRACE_SECONDS = 60.0
# A ledger row as the sink handles it: column name -> value (timestamps are aware UTC datetimes).
Row = dict[str, Any]
# Tries of a featurizing job before its files are split to find the one(s) that make it fail.
FEATURIZE_ATTEMPTS = 2
# How a featurizing job fails when a file breaks it: a Python worker that died (Py4JJavaError: "Python worker exited
# unexpectedly"), an exception raised in the UDF (PythonException), a JVM-side read error (Py4JJavaError).
JOB_FAILURES = (Py4JJavaError, PythonException)
OVERWRITE_REASON = "overwritten in place after its ingestion; not featurized again ([discovery] allow_overwrites = false)"


class LandedFiles:
    """Size/mtime checks and moves of landed files: the local file system directly, any other through Hadoop.

    A file is given as its ledger row (exact: a name that is not UTF-8 is found by its ``raw_path``) or as a URI. A
    URI that is a ledger ``path`` of a row :meth:`register`-ed here stands for that row's exact file. Files whose
    name the reader cannot open (:func:`fruits.names.needs_alias`) are read through a hard link named by their
    ``file_id`` (:meth:`readable`), removed when the file is moved or removed, or by :meth:`release`."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self._exact: dict[str, bytes] = {}  # ledger path -> exact local path, for rows whose path is not exact
        self._aliases: dict[bytes, bytes] = {}  # exact local path -> its alias

    def register(self, rows: list[Row]) -> None:
        """Remember the exact local paths of ``rows`` whose ``path`` is not their exact name."""
        for row in rows:
            if row.get("raw_path") is not None:
                self._exact[row["path"]] = local_bytes(row)

    def _local(self, file: str | Row) -> bytes | str | None:
        """The local path of a row or URI (exact bytes when known), or None on a remote store."""
        if not isinstance(file, str):
            return local_bytes(file)
        return self._exact.get(file) or local_path(file)

    def _uri(self, file: str | Row) -> str:
        return file if isinstance(file, str) else file["path"]

    def version(self, file: str | Row) -> tuple[int, int] | None:
        """(size, mtime in ms) of the file (a ledger row or a URI), or None if there is none."""
        local = self._local(file)
        if local is not None:
            try:
                stat = os.stat(local)
            except (FileNotFoundError, NotADirectoryError):
                return None
            return stat.st_size, stat.st_mtime_ns // 1_000_000
        size = storage.file_length(self.spark, self._uri(file))
        return None if size is None else (size, -1)  # object stores: the size is the check

    def taken(self, uri: str) -> bool:
        local = local_path(uri)
        return os.path.lexists(local) if local is not None else storage.exists(self.spark, uri)

    def readable(self, row: Row, landing: str) -> str | None:
        """The path the reader (Spark's ``binaryFile``) is given for ``row``: its own, or for a name it cannot open,
        a hard link to it at :func:`fruits.names.alias_path` (a copy with the same mtime where links fail); None if
        the file is gone."""
        if not needs_alias(row) or local_path(landing) is None:
            return row["path"]
        exact, alias = local_bytes(row), alias_path(landing, row["file_id"])
        target = os.fsencode(local_path(alias))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            if not os.path.lexists(target):
                try:
                    os.link(exact, target, follow_symlinks=True)
                except FileNotFoundError:
                    return None
                except OSError:  # a file system without hard links
                    shutil.copy2(exact, target)
        except FileNotFoundError:
            return None
        self._aliases[exact] = target
        return alias

    def release(self, rows: list[Row]) -> None:
        """Remove the read aliases of ``rows`` (once their outcomes are committed)."""
        for row in rows:
            exact = local_bytes(row)
            if exact is not None:
                self._unalias(exact)

    def _unalias(self, exact: bytes | str) -> None:
        alias = self._aliases.pop(os.fsencode(exact), None)
        if alias is not None:
            try:
                os.unlink(alias)
            except FileNotFoundError:
                pass

    @staticmethod
    def sweep(landing: str) -> int:
        """Remove every read alias left in ``landing`` (by a stream that stopped between a read and its outcome's
        commit); only while no other stream reads this landing folder (at start-up, under the stream's lock).
        Returns how many were removed."""
        local = local_path(landing)
        folder = os.path.join(local, ALIAS_FOLDER) if local is not None else None
        if folder is None or not os.path.isdir(folder):
            return 0
        removed = 0
        for entry in os.scandir(folder):
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def move(self, file: str | Row, target: str) -> bool:
        local, local_target = self._local(file), local_path(target)
        if local is not None and local_target is not None:
            os.makedirs(os.path.dirname(local_target), exist_ok=True)
            # a link within landing: its target's bytes (what was read) are stored, and the link removed; the
            # target, if it is itself landed, has its own row
            source = local
            if os.path.islink(local):
                source = os.path.join(os.path.dirname(local_target), temporary_name(os.path.basename(local_target)))
                shutil.copy2(local, source)
            try:
                os.link(source, local_target)  # never replaces an existing file, unlike rename
            except FileExistsError:
                return False
            finally:
                if source is not local:
                    os.unlink(source)
            os.unlink(local)
            self._unalias(local)
            return True
        return storage.rename(self.spark, self._uri(file), target)

    def remove(self, file: str | Row) -> None:
        local = self._local(file)
        if local is not None:
            try:
                os.unlink(local)
            except FileNotFoundError:
                pass
            self._unalias(local)
        else:
            storage.delete(self.spark, self._uri(file))


class StopRequested(RuntimeError):
    """Raised between chunks when a stop was requested: the micro-batch ends without being marked done."""


@dataclass
class OutcomeSink:
    """``foreachBatch`` writer of the ledger stream; see the module docstring."""

    features_table: str
    quarantine_table: str
    landing: str  # as Spark spells it
    archive: str
    after_ingest: str  # "archive" | "delete" | "keep"
    allow_overwrites: bool
    chunk_rows: int
    partitions: int
    handler: Featurizer
    max_bytes: int
    max_pixels: int
    progress: Progress
    crash_marker: bytes = b""  # tests only: [testing] crash_worker_on_bytes
    stop_requested: threading.Event | None = None  # set by SIGTERM / Ctrl-C: stop between chunks
    # Seconds since the epoch: no outcome row was discovered later than this (read once, then kept up to date).
    _decided_until: float | None = None
    _micro_batch: int | None = None  # the one being written (recorded in each commit)
    _loaded: dict[str, AppendTarget] = field(default_factory=dict)  # the outcome tables, kept loaded for the appends

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        files = LandedFiles(batch.sparkSession)
        started = time.perf_counter()
        self._micro_batch = batch_id
        for chunk in self._undecided_chunks(batch):
            if self.stop_requested is not None and self.stop_requested.is_set():
                # Not a normal return, which would mark the micro-batch done: it is replayed at the next start,
                # where its chunks already written are found decided.
                raise StopRequested(f"stopped during micro-batch {batch_id}; it is finished at the next start")
            stored = self._destinations(chunk, files)
            self._write_outcomes(batch.sparkSession, chunk, stored, files)
            with self.progress.phases.timed("after_ingest"):
                self._after_ingest(chunk, stored, files)
            self.progress.chunk_done(batch_id, len(chunk), time.perf_counter() - started)
            started = time.perf_counter()

    def _undecided_chunks(self, batch: DataFrame) -> Iterator[list[Row]]:
        """The batch's ledger rows that have no outcome row yet, in chunks of ``chunk_rows``. A micro-batch holds
        a few ledger commits (some 20,000 rows at most: :mod:`fruits.streaming.ledger_source`), so its rows are
        collected (through Arrow: timestamps arrive as aware UTC datetimes)."""
        with self.progress.phases.timed("ledger"):
            ledger = batch.select(*LEDGER_COLUMNS).toArrow().to_pylist()
            rows = list({row["file_id"]: row for row in ledger}.values())
            decided = self._decided(batch, rows) if rows else set()
        todo = [row for row in rows if row["file_id"] not in decided]  # (duplicate versions were dropped above)
        if decided:
            log.info("%d of %d ledger rows already have an outcome (a replay): skipped", len(decided), len(rows))
        for start in range(0, len(todo), self.chunk_rows):
            chunk = todo[start : start + self.chunk_rows]
            yield chunk
            # its outcomes are committed now
            self._decided_until = max(self._decided_until, max(row["discovered_at"] for row in chunk).timestamp())

    def _decided(self, batch: DataFrame, rows: list[Row]) -> set[str]:
        """The ``file_id`` values of ``rows`` that already have an outcome row. The check is one job that reads only
        the outcome rows discovered in the rows' time range (Delta data skipping on ``discovered_at``), so it stays
        cheap as the tables grow. It is skipped when every row was discovered after the newest ``discovered_at`` of
        any outcome row, since none can have one then: the usual micro-batch. A replay, a new checkpoint, or rows
        recorded out of order by another process run it."""
        low, high = min(row["discovered_at"] for row in rows), max(row["discovered_at"] for row in rows)
        if self._decided_until is None:
            self._decided_until = newest_outcome(self.features_table, self.quarantine_table)
        if low.timestamp() > self._decided_until:
            return set()
        spark = batch.sparkSession
        outcomes = [
            spark.read.format("delta").load(table).select("file_id", "discovered_at")
            for table in (self.features_table, self.quarantine_table)
        ]
        found = (
            reduce(DataFrame.unionByName, outcomes)
            .where(F.col("discovered_at").between(low, high))
            .join(F.broadcast(batch.select("file_id")), "file_id", "left_semi")
            .select("file_id")
            .collect()
        )
        return {row["file_id"] for row in found}

    def _destinations(self, chunk: list[Row], files: LandedFiles) -> dict[str, str | None]:
        """Where each file's bytes will be once its outcome is committed (recorded in the outcome row)."""
        if self.after_ingest == "keep":
            return {row["file_id"]: row["path"] for row in chunk}
        if self.after_ingest == "delete":
            return {row["file_id"]: None for row in chunk}
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        prefix, chosen, stored = self.landing.rstrip("/") + "/", set(), {}
        for row in chunk:
            relative = row["path"][len(prefix) :] if row["path"].startswith(prefix) else row["path"].rsplit("/", 1)[-1]
            target = f"{self.archive.rstrip('/')}/{day}/{relative}"
            if target in chosen or files.taken(target):  # the same name archived before today: keep both
                stem, dot, extension = target.rpartition(".")
                target = f"{stem}~{row['file_id'][:8]}{dot}{extension}"
            chosen.add(target)
            stored[row["file_id"]] = target
        return stored

    def _write_outcomes(self, spark: SparkSession, chunk: list[Row], stored: dict, files: LandedFiles) -> None:
        """The chunk's outcome rows: featurized rows, and quarantine rows (rejected images, files that produced no
        row, verdicts made from the ledger row alone, and poison files)."""
        verdicts = [(row, reason) for row in chunk if (reason := self._verdict(row))]
        decided = {row["file_id"] for row, _ in verdicts}
        self._await_published([row for row in chunk if row["file_id"] not in decided], files)
        verdicts += self._write_readable(spark, [row for row in chunk if row["file_id"] not in decided], stored, files)
        with self.progress.phases.timed("append"):
            rows = quarantine_rows(verdicts, stored, self.handler.model_id)
            append(self._table(self.quarantine_table), rows, self._micro_batch)

    def _table(self, location: str) -> AppendTarget:
        """The outcome table at ``location``, kept loaded (each append then writes only its commit)."""
        if location not in self._loaded:
            self._loaded[location] = AppendTarget(location)
        return self._loaded[location]

    def _verdict(self, row: Row) -> str | None:
        """A quarantine reason known from the ledger row alone (the file is not read), or None."""
        if row["overwrites"] and not self.allow_overwrites:
            return OVERWRITE_REASON
        if row["size_bytes"] > self.max_bytes:  # never read: not by Python, not by the JVM (>2 GiB would fail it)
            return f"file is {row['size_bytes']} bytes, above the limit of {self.max_bytes} bytes"
        return None

    def _write_readable(self, spark: SparkSession, rows: list[Row], stored: dict, files: LandedFiles) -> list[tuple]:
        """Featurize and append ``rows``; returns (row, reason) of the files that crashed the featurizing job.

        A failed job (a Python worker that died on a file, a JVM-side read error) is tried ``FEATURIZE_ATTEMPTS``
        times, then the rows are split in halves until the failing files are alone (tried that often again). A file that fails alone is
        poison only if a known-good probe image still goes through; otherwise the failure is not the files' fault
        and is raised (the stream stops, and the batch is replayed on restart: no verdict is made)."""
        poison, pending = [], [rows] if rows else []
        while pending:
            group = pending.pop()
            error = None
            # The whole chunk and a lone file get every try; the halves in between one each (a split costs a job,
            # and a crashed worker must load the model again).
            for _ in range(FEATURIZE_ATTEMPTS if group is rows or len(group) == 1 else 1):
                try:
                    self._write_group(spark, group, stored, files)
                    error = None
                    break
                except JOB_FAILURES as exc:
                    if "SPARK_JOB_CANCELLED" in str(exc) or (self.stop_requested and self.stop_requested.is_set()):
                        raise  # the query is stopping: that says nothing about the files
                    error = exc
                    log.warning("featurizing %d files failed: %s", len(group), _cause(exc))
            if error is None:
                continue
            if len(group) > 1:
                pending += [group[: len(group) // 2], group[len(group) // 2 :]]
            elif self._probe_works(spark):
                poison.append((group[0], f"featurizing this file failed {FEATURIZE_ATTEMPTS} times, alone: {_cause(error)}"))
            else:
                raise error
        for row, reason in poison:
            log.error("quarantined %s: %s", row["path"], reason)
        return poison

    def _write_group(self, spark: SparkSession, rows: list[Row], stored: dict, files: LandedFiles) -> None:
        """Read and featurize ``rows`` in one Spark job, collected through Arrow and paired with the ledger rows on the
        driver, then append one commit per table from here (:mod:`fruits.streaming.outcomes`); a ledger row that
        produced no row is quarantined with why."""
        with self.progress.phases.timed("featurize"):
            read = self._featurize(self._read(spark, rows, files)).toArrow()  # the job: every core
        featurized, unread = featurized_rows(rows, read, stored, self.handler.model_id)
        accepted, rejected = split_featurized(featurized)
        if unread:
            reasons = [(row, self._unread_reason(row, files)) for row in unread]
            rejected = pa.concat_tables([rejected, quarantine_rows(reasons, stored, self.handler.model_id)])
        with self.progress.phases.timed("append"):
            append(self._table(self.features_table), accepted, self._micro_batch)
            append(self._table(self.quarantine_table), rejected, self._micro_batch)

    def _await_published(self, rows: list[Row], files: LandedFiles) -> None:
        """Wait for the files that their writer recorded before making them visible, if they are not there yet
        (see :data:`RECORDED_FIRST`), until they are or :data:`PUBLISH_GRACE_SECONDS` after their discovery."""
        def unpublished(candidates: list[Row]) -> list[Row]:
            now = time.time()
            return [
                row for row in candidates
                if row["discovered_by"] in RECORDED_FIRST and row["discovered_at"].timestamp() + PUBLISH_GRACE_SECONDS > now
                and files.version(row["path"]) is None
            ]

        waiting = unpublished(rows)
        if waiting:
            log.info("waiting for %d recorded files to appear (e.g. %s)", len(waiting), waiting[0]["path"])
        while waiting and not (self.stop_requested is not None and self.stop_requested.is_set()):
            time.sleep(0.05)  # usually the few milliseconds between the writer's ledger commit and its rename
            waiting = unpublished(waiting)

    def _probe_works(self, spark: SparkSession) -> bool:
        """Whether the featurizing job works at all: one small image made here, through the same UDF."""
        probe = spark.createDataFrame([(PROBE_IMAGE,)], "content binary")
        try:
            row = probe.select(featurize_column(F.col("content"), self.handler, self.max_pixels).alias("r")).head()
        except JOB_FAILURES:
            return False
        return row["r"]["error"] is None

    def _read(self, spark: SparkSession, rows: list[Row], files: LandedFiles) -> DataFrame:
        """``binaryFile`` over exactly the rows' paths (those still there; a file deleted meanwhile is skipped by
        ``spark.sql.files.ignoreMissingFiles`` and quarantined as disappeared). A file whose name the JVM cannot
        open is read through its alias (:meth:`LandedFiles.readable`), which the pairing maps back by ``file_id``."""
        files.register(rows)
        paths = sorted({path for row in rows if files.version(row) is not None and (path := files.readable(row, self.landing))})
        for _ in range(3):
            if not paths:
                break
            try:
                return spark.read.format("binaryFile").schema(BINARY_FILE_SCHEMA).load([glob_escape(p) for p in paths])
            except AnalysisException as exc:  # PATH_NOT_FOUND: deleted between our check and Spark's
                if "PATH_NOT_FOUND" not in str(exc):
                    raise
                paths = [p for p in paths if files.version(p) is not None]
        return spark.createDataFrame([], BINARY_FILE_SCHEMA)

    def _featurize(self, content: DataFrame) -> DataFrame:
        """Bytes -> what the driver pairs with the ledger rows (:func:`fruits.streaming.outcomes.featurized_rows`):
        path, size and mtime as read, the content's hash, and ``result`` (``features`` or an ``error``). No join with
        the ledger rows here: a broadcast of driver-made rows is one more job per chunk (``bench/latency.py``)."""
        return content.coalesce(self.partitions).select(
            "path",
            "length",
            F.unix_millis("modificationTime").alias("mtime_ms"),
            F.sha2("content", 256).alias("content_sha256"),
            featurize_column(F.col("content"), self.handler, self.max_pixels, self.crash_marker).alias("result"),
        )

    @staticmethod
    def _unread_reason(row: Row, files: LandedFiles) -> str:
        now = files.version(row["path"])
        if now is None:
            return "file disappeared before it was read"
        if now[0] == 0:
            return "empty file (0 bytes)"
        return "listed in the ledger but produced no row when read"

    def _after_ingest(self, chunk: list[Row], stored: dict, files: LandedFiles) -> None:
        """Archive or delete the chunk's files, now that their outcomes are committed. A file that is no longer the
        version its row describes (overwritten meanwhile) stays: its newer version has its own ledger row."""
        if self.after_ingest == "keep":
            return
        for row in chunk:
            now = files.version(row["path"])
            if now is None or now[0] != row["size_bytes"] or (now[1] != -1 and now[1] != epoch_ms(row["modified_at"])):
                continue
            try:
                if self.after_ingest == "delete":
                    files.remove(row["path"])
                elif not files.move(row["path"], stored[row["file_id"]]):
                    log.warning("could not archive %s to %s; it stays in landing", row["path"], stored[row["file_id"]])
            except OSError as exc:  # the outcome is committed: a file left in landing is only a cost, not a loss
                log.warning("could not %s %s: %s", self.after_ingest, row["path"], exc)


def newest_outcome(*tables: str) -> float:
    """The newest ``discovered_at`` of the outcome tables' rows (seconds since the epoch), from the files' Delta
    statistics (no scan). Statistics keep milliseconds, so one is added: the answer is never too early."""
    newest = 0.0
    for table in tables:
        try:
            actions = pa.table(DeltaTable(rust_uri(table)).get_add_actions(flatten=True))
        except TableNotFoundError:
            continue
        column = "max.discovered_at"
        if actions.num_rows and column in actions.column_names:
            value = pc.max(actions.column(column)).as_py()
            if value is not None:
                newest = max(newest, value.timestamp() + 0.001)
        elif actions.num_rows:  # rows without statistics: assume they may be the newest
            return float("inf")
    return newest


def _cause(exc: BaseException) -> str:
    """What made a Spark job fail, in one line of at most 300 characters: the root cause of the Java exception that
    names the file's problem (a worker that crashed, a file Spark cannot read), not the scheduler's wrapping."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    causes = [re.sub(r"^Caused by: ", "", line) for line in lines if line.startswith("Caused by: ")]
    telling = [c for c in causes + lines if re.search(r"worker exited|crashed|exceeds the max length", c)]
    gist = (telling or causes[-1:] or lines[:1] or [type(exc).__name__])[0]
    return re.split(r"[\w.$]+(?:Exception|Error): ", gist)[-1][:300]


def _probe_image() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buffer, "PNG")
    return buffer.getvalue()


PROBE_IMAGE = _probe_image()
