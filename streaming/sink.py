"""The stream's ``foreachBatch`` sink: ledger rows in, exactly one outcome row out for each (features | quarantine).

For each micro-batch of ledger rows:

1. **Already decided?** The ``file_id`` values that already have an outcome row are dropped. The lookup reads only
   the outcome rows discovered in the batch's time range (Delta data skipping on ``discovered_at``), so it stays cheap
   as the tables grow. This check, not the checkpoint, makes the sink idempotent: a replay after a crash, a deleted or
   new checkpoint, or other batch boundaries never write a second outcome for a file version.
2. **Featurize** the rest in chunks of ``[stream] max_files_per_trigger``: one Spark job reads exactly those files
   (on a local home its Python workers open them; on a remote one, ``binaryFile``) and featurizes them; its rows
   are collected through Arrow and appended from the driver, one delta-rs commit per table and chunk
   (:mod:`fruits.streaming.outcomes`). A ledger row whose file is
   gone, empty, or no longer the version the ledger recorded gets a quarantine row saying so.
3. **After ingest**: once a chunk's outcomes are committed, its featurized files are archived (or deleted, or kept:
   ``[discovery] after_ingest``) and its quarantined files are moved to ``HOME/quarantine/`` (or kept; never deleted:
   a verdict can be undone), so the landing folder only holds the backlog. A file is moved only if it is still the
   version that was read (size, mtime and inode checked right before the move, and again after it).

A ledger row asks for one try (``attempt``) of a file version; the sink gives each (file version, attempt) exactly
one outcome. Quarantine verdicts that may pass (:mod:`fruits.home.verdicts`) are handed to the stream's retries
(:mod:`fruits.streaming.retries`), which record the next attempt when it is due.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import reduce
from typing import Any, Callable, Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import pyarrow as pa
import pyarrow.compute as pc
from py4j.protocol import Py4JJavaError
from pyspark.errors import PythonException

from fruits.config import AfterIngest
from fruits.errors import Stopped
from fruits.home.filesystem import Files, HadoopFiles
from fruits.model.udf import featurize_column, featurize_paths
from fruits.spark.conditions import error_conditions
from fruits.model.featurizer import Featurizer
from fruits.home.names import ALIAS_FOLDER, alias_path, fit_relative, local_bytes, needs_alias
from fruits.home.tables import Table, TableSealed
from fruits.home.uris import local_path
from fruits.home.verdicts import Cause, retryable
from fruits.landing.writers import writer_alive
from fruits.streaming.outcomes import (
    Places, Verdict, append, epoch_ms, featurized_rows, quarantine_rows, source, split_featurized,
)
from fruits.streaming.progress import Progress

log = logging.getLogger("fruits.stream")

LEDGER_COLUMNS = [
    "file_id", "path", "label", "size_bytes", "modified_at", "discovered_at", "discovered_by", "overwrites",
    "attempt", "writer", "read_from", "raw_path",
]
# `fruits drop`, `fruits stage` and web uploads record a file in the ledger just before they make it visible (a rename;
# on S3, its PUT, one after another for a group of 500). A row of theirs whose file is not there yet is looked at again
# for this long (usually the milliseconds between the writer's commit and its rename), then, while its writer still
# heartbeats, quarantined as "waiting" (not blocking the rest of the chunk): the stream's retries take it again when
# the file appears or the writer stops (fruits.landing.writers).
RECORDED_FIRST = ("drop", "stage", "upload")
PUBLISH_WAIT_SECONDS = 1.0
# A ledger row as the sink handles it: column name -> value (timestamps are aware UTC datetimes).
Row = dict[str, Any]
# What a chunk's row got: FEATURIZED, or the cause of its quarantine row.
FEATURIZED = "featurized"


def key(row: Row) -> tuple[str, int]:
    """A ledger row's (file version, attempt): what gets exactly one outcome."""
    return row["file_id"], int(row.get("attempt") or 0)


def at(row: Row) -> Row:
    """The row as :class:`LandedFiles` finds its bytes: at its path, or, for a retry of a file kept in quarantine,
    at its ``read_from`` (a name of the stream's own making)."""
    return {**row, "path": row["read_from"], "raw_path": None} if row.get("read_from") else row


# Tries of a featurizing job before its files are split to find the one(s) that make it fail.
FEATURIZE_ATTEMPTS = 2
# How a featurizing job fails when a file breaks it: a Python worker that died (Py4JJavaError: "Python worker exited
# unexpectedly"), an exception raised in the UDF (PythonException), a JVM-side read error (Py4JJavaError).
JOB_FAILURES = (Py4JJavaError, PythonException)
OVERWRITE_REASON = "overwritten in place after its ingestion; not featurized again ([discovery] allow_overwrites = false)"


class LandedFiles:
    """Size/mtime checks and moves of landed files, through the home's file system (:mod:`fruits.home.filesystem`:
    a local disk directly, any other store through Hadoop).

    A file is given as its ledger row (exact: a name that is not UTF-8 is found by its ``raw_path``) or as a URI. A
    URI that is a ledger ``path`` of a row :meth:`register`-ed here stands for that row's exact file. Files whose
    name the reader cannot open (:func:`fruits.home.names.needs_alias`) are read through a hard link named by their
    ``file_id`` (:meth:`readable`), removed when the file is moved or removed, or by :meth:`release`."""

    def __init__(self, files: Files) -> None:
        self.files = files
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

    def _name(self, file: str | Row) -> bytes | str:
        """How the file system is given the file: its exact local path, or its URI."""
        local = self._local(file)
        return local if local is not None else file if isinstance(file, str) else file["path"]

    def version(self, file: str | Row) -> tuple[int, int] | None:
        """(size, mtime in ms) of the file (a ledger row or a URI), or None if there is none; object stores: (size,
        -1) (the size is the check)."""
        identity = self.identity(file)
        return None if identity is None else identity[:2]

    def taken(self, uri: str) -> bool:
        return self.files.exists(uri)

    def readable(self, row: Row, landing: str) -> str | None:
        """The path the reader (Spark's ``binaryFile``) is given for ``row``: its own, or for a name it cannot open,
        a hard link to it at :func:`fruits.home.names.alias_path` (a copy with the same mtime where links fail); None if
        the file is gone."""
        if not needs_alias(row) or local_path(landing) is None:
            return row["path"]
        exact, alias = local_bytes(row), alias_path(landing, row["file_id"])
        target = os.fsencode(local_path(alias))
        if not self.files.local.alias(exact, target):
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
            self.files.local.delete(alias)

    def sweep(self, landing: str) -> int:
        """Remove every read alias left in ``landing`` (by a stream that stopped between a read and its outcome's
        commit); only while no other stream reads this landing folder (at start-up, under the stream's lock).
        Returns how many were removed."""
        if local_path(landing) is None:
            return 0
        left = [entry for entry in self.files.local.list(f"{landing.rstrip('/')}/{ALIAS_FOLDER}") if not entry.is_dir]
        for entry in left:
            self.files.local.delete(entry.uri)
        return len(left)

    def remove(self, file: str | Row) -> None:
        self.files.delete(self._name(file))
        local = self._local(file)
        if local is not None:
            self._unalias(local)

    def present(self, files: list[Row]) -> set[str]:
        """The ``path`` of those of ``files`` (ledger rows) that are there now: a stat each on the local file system,
        else one listing per folder (a large drop still uploading to S3 is looked at in a few requests, not one per
        photo)."""
        if all(self._local(row) is not None for row in files):
            return {row["path"] for row in files if (found := self.files.stat(self._name(row))) and not found.is_dir}
        folders: dict[str, list[str]] = {}
        for uri in (row["path"] for row in files):
            folders.setdefault(uri.rsplit("/", 1)[0], []).append(uri)
        found = set()
        for folder, members in folders.items():
            if len(members) == 1:
                found.update(uri for uri in members if self.version(uri) is not None)
            else:
                names = {entry.name for entry in self.files.list(folder) if not entry.is_dir}
                found.update(uri for uri in members if uri.rsplit("/", 1)[1] in names)
        return found

    def identity(self, file: str | Row) -> tuple[int, int, int] | None:
        """(size, mtime in ms, inode) of the file (a ledger row or a URI; object stores: (size, -1, -1)), or None if
        there is none: what must not change between a file's reading and its move (:attr:`FileStat.identity`)."""
        found = self.files.stat(self._name(file))
        return None if found is None else found.identity

    def is_link(self, file: str | Row) -> bool:
        """Whether the file (a ledger row or a URI) is a symbolic link: local files only (object stores have none)."""
        local = self._local(file)
        return local is not None and self.files.local.is_link(local)

    def move_unchanged(self, file: str | Row, target: str, expected: tuple[int, int, int]) -> bool:
        """Move the file (a ledger row or a URI) to ``target`` if it is still ``expected`` (:meth:`identity`) and
        ``target`` is free; a local move that a writer raced (the file changed during the move) is undone, and a
        symbolic link within landing is stored as the bytes it leads to (:meth:`LocalFiles.move`). Whether it
        moved."""
        moved = self.files.move(self._name(file), target, unchanged=expected)
        local = self._local(file)
        if moved and local is not None:
            self._unalias(local)
        return moved


class StopRequested(Stopped):
    """Raised when the sink ends a micro-batch early because a stop was requested (between two chunks, or when a job
    failed meanwhile): the micro-batch is not marked done, and is finished at the next start. It crosses the JVM as
    text only, so :meth:`ending` records it in the stream's :class:`Progress` first: the stream tells this end from a
    failure by that record, not by the text."""

    def __init__(self, message: str, *, micro_batch: int | None = None) -> None:
        super().__init__(message)
        self.micro_batch = micro_batch

    @classmethod
    def ending(cls, progress: Progress, micro_batch: int) -> "StopRequested":
        progress.stopped_in = micro_batch
        message = f"stopped during micro-batch {micro_batch}; it is finished at the next start"
        return cls(message, micro_batch=micro_batch)


@dataclass
class OutcomeSink:
    """``foreachBatch`` writer of the ledger stream; see the module docstring."""

    features_table: Table  # kept by the sink for its appends: each writes its commit without reading the log again
    quarantine_table: Table
    landing: str  # as Spark spells it
    archive: str
    quarantine: str  # where quarantined originals are kept (HOME/quarantine)
    after_ingest: AfterIngest
    allow_overwrites: bool
    chunk_rows: int
    partitions: int
    featurizer: Featurizer
    max_bytes: int
    max_pixels: int
    progress: Progress
    max_retries: int = 3  # transient failures tried again this many times ([stream] max_retries)
    writers: str = ""  # HOME/writers: heartbeats of drop, stage and serve (fruits.landing.writers)
    writer_timeout: float = 30.0
    # Told about each retryable quarantine row once it is committed (the stream's retries); None: nobody is.
    on_retryable: Callable[[list[dict]], None] | None = None
    stop_requested: threading.Event | None = None  # set by SIGTERM / Ctrl-C: stop between chunks
    # The home's files (local paths through the OS, others through Hadoop); None: the batch's session's Hadoop.
    files: Files | None = None
    # Seconds since the epoch: no outcome row was discovered later than this (read once, then kept up to date).
    _decided_until: float | None = None
    _micro_batch: int | None = None  # the one being written (recorded in each commit)
    # The chunk being written: what each row got (FEATURIZED or a Cause), and each file's identity when it was read.
    _got: dict[tuple[str, int], str] = field(default_factory=dict)
    _seen: dict[tuple[str, int], tuple[int, int, int] | None] = field(default_factory=dict)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        try:
            self._write_batch(batch, batch_id)
        except TableSealed as sealed:  # a switch sealed the features table: this micro-batch is replayed with
            self.progress.sealed_by = sealed.sealed_by  # the model that replaces it (fruits.streaming.ingest)
            raise

    def _write_batch(self, batch: DataFrame, batch_id: int) -> None:
        files = LandedFiles(self.files or Files(remote=HadoopFiles(batch.sparkSession)))
        started = time.perf_counter()
        self._micro_batch = batch_id
        for chunk in self._undecided_chunks(batch):
            if self.stop_requested is not None and self.stop_requested.is_set():
                # Not a normal return, which would mark the micro-batch done: it is replayed at the next start,
                # where its chunks already written are found decided.
                raise StopRequested.ending(self.progress, batch_id)
            places = self._places(chunk, files)
            self._got, self._seen = {}, {}
            self._write_outcomes(batch.sparkSession, chunk, places, files)
            with self.progress.phases.timed("after_ingest"):
                self._after_ingest(chunk, places, files)
            self.progress.chunk_done(batch_id, len(chunk), time.perf_counter() - started)
            started = time.perf_counter()

    def _undecided_chunks(self, batch: DataFrame) -> Iterator[list[Row]]:
        """The batch's ledger rows that have no outcome row yet, in chunks of ``chunk_rows``. A micro-batch holds
        a few ledger commits (some 20,000 rows at most: :mod:`fruits.streaming.ledger_source`), so its rows are
        collected (through Arrow: timestamps arrive as aware UTC datetimes)."""
        with self.progress.phases.timed("ledger"):
            ledger = batch.select(*LEDGER_COLUMNS).toArrow().to_pylist()
            rows = list({key(row): row for row in ledger}.values())
            decided = self._decided(batch, rows) if rows else set()
        todo = [row for row in rows if key(row) not in decided]  # (rows asking twice for one try were dropped above)
        if decided:
            log.info("%d of %d ledger rows already have an outcome (a replay): skipped", len(decided), len(rows))
        for start in range(0, len(todo), self.chunk_rows):
            chunk = todo[start : start + self.chunk_rows]
            yield chunk
            # its outcomes are committed now
            self._decided_until = max(self._decided_until, max(row["discovered_at"] for row in chunk).timestamp())

    def _decided(self, batch: DataFrame, rows: list[Row]) -> set[tuple[str, int]]:
        """The (``file_id``, ``attempt``) of ``rows`` that already have an outcome row. The check is one job that
        reads only the outcome rows discovered in the rows' time range (Delta data skipping on ``discovered_at``), so
        it stays cheap as the tables grow. It is skipped when every row was discovered after the newest
        ``discovered_at`` of any outcome row, since none can have one then: the usual micro-batch. A replay, a new
        checkpoint, or rows recorded out of order by another process run it."""
        low, high = min(row["discovered_at"] for row in rows), max(row["discovered_at"] for row in rows)
        if self._decided_until is None:
            self._decided_until = newest_outcome(self.features_table, self.quarantine_table)
        if low.timestamp() > self._decided_until:
            return set()
        spark = batch.sparkSession
        attempt = F.coalesce(F.col("attempt"), F.lit(0)).cast("long").alias("attempt")
        outcomes = [
            table.frame(spark).where(F.col("discovered_at").between(low, high))
            .select("file_id", attempt)
            for table in (self.features_table, self.quarantine_table)
        ]
        found = (
            reduce(DataFrame.unionByName, outcomes)
            .join(F.broadcast(batch.select("file_id", attempt)), ["file_id", "attempt"], "left_semi")
            .collect()
        )
        return {(row["file_id"], int(row["attempt"])) for row in found}

    def _places(self, chunk: list[Row], files: LandedFiles) -> dict[str, Places]:
        """Where each file's bytes will be once its outcome is committed, as features or as quarantine (recorded in
        the outcome row's ``stored_path``)."""
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        chosen: set[str] = set()
        places = {}
        for row in chunk:
            if self.after_ingest == "keep":
                places[row["file_id"]] = Places(source(row), source(row))  # kept where it is
                continue
            kept = row.get("read_from") if (row.get("read_from") or "").startswith(self.quarantine.rstrip("/") + "/") else None
            places[row["file_id"]] = Places(
                features=None if self.after_ingest == "delete" else self._free_target(self.archive, day, row, chosen, files),
                quarantine=kept or self._free_target(self.quarantine, day, row, chosen, files),
            )
        return places

    def _free_target(self, root: str, day: str, row: Row, chosen: set[str], files: LandedFiles) -> str:
        """``root/<day>/<the file's path below landing>`` (each name valid UTF-8 and at most 255 bytes:
        :func:`fruits.home.names.fit_relative`), made unique with the file's id if that is taken (the same name stored
        before today) or already chosen for another file of the chunk."""
        prefix = self.landing.rstrip("/") + "/"
        relative = row["path"][len(prefix) :] if row["path"].startswith(prefix) else row["path"].rsplit("/", 1)[-1]
        target = f"{root.rstrip('/')}/{day}/{fit_relative(relative)}"
        if target in chosen or files.taken(target):
            target = f"{root.rstrip('/')}/{day}/{fit_relative(relative, row['file_id'])}"
        chosen.add(target)
        return target

    def _write_outcomes(self, spark: SparkSession, chunk: list[Row], places: dict[str, Places], files: LandedFiles) -> None:
        """The chunk's outcome rows: featurized rows, and quarantine rows (rejected images, files that produced no
        row, verdicts made from the ledger row alone, files not there, and files that failed their job alone)."""
        verdicts = [verdict for row in chunk if (verdict := self._verdict(row))]
        decided = {key(verdict.row) for verdict in verdicts}
        for verdict in verdicts:  # never read: the file as it is now is what a move must find
            self._seen[key(verdict.row)] = files.identity(at(verdict.row))
        rest = [row for row in chunk if key(row) not in decided]
        absent, rest = self._absent(rest, files)
        verdicts += absent
        verdicts += self._write_readable(spark, rest, places, files)
        with self.progress.phases.timed("append"):
            self._quarantine(verdicts, places)

    def _quarantine(self, verdicts: list[Verdict], places: dict[str, Places], rows: pa.Table | None = None) -> None:
        """Append the quarantine rows of ``verdicts`` (and the ready-made ``rows``) in one commit, then hand the
        retryable ones to :attr:`on_retryable`."""
        made = quarantine_rows(verdicts, places, self.featurizer.model_id)
        table = made if rows is None else pa.concat_tables([rows, made])
        append(self.quarantine_table, table, self._micro_batch)
        for row in table.select(["file_id", "attempt", "cause"]).to_pylist():
            self._got[(row["file_id"], row["attempt"])] = row["cause"]
        if self.on_retryable is not None:
            again = table.filter(pc.fill_null(table.column("retryable"), False)).to_pylist()
            ledger = {verdict.row["file_id"]: verdict.row for verdict in verdicts}  # what outcome rows do not carry
            if again:
                self.on_retryable([
                    {**row, **{name: ledger.get(row["file_id"], {}).get(name) for name in ("writer", "raw_path")}}
                    for row in again
                ])

    def _verdict(self, row: Row) -> Verdict | None:
        """A quarantine verdict known from the ledger row alone (the file is not read), or None."""
        if row["overwrites"] and not self.allow_overwrites:
            return Verdict(row, OVERWRITE_REASON, Cause.OVERWRITTEN)
        if row["size_bytes"] > self.max_bytes:  # never read: not by Python, not by the JVM (>2 GiB would fail it)
            reason = f"file is {row['size_bytes']} bytes, above the limit of {self.max_bytes} bytes"
            return Verdict(row, reason, Cause.TOO_LARGE)
        return None

    def _absent(self, rows: list[Row], files: LandedFiles) -> tuple[list[Verdict], list[Row]]:
        """Split off the rows whose file is not there: (their verdicts, the rows to read). A file its writer recorded
        before making it visible (:data:`RECORDED_FIRST`) is looked at again for up to :data:`PUBLISH_WAIT_SECONDS`;
        still absent, it is "waiting" while its writer heartbeats, else "missing". Both are retried by the stream's
        retries when the file appears. Records each present file's identity (the move checks it)."""
        for row in rows:
            self._seen[key(row)] = files.identity(at(row))
        absent = [row for row in rows if self._seen[key(row)] is None]
        deadline = time.monotonic() + PUBLISH_WAIT_SECONDS
        recorded_first = [row for row in absent if row["discovered_by"] in RECORDED_FIRST]
        if recorded_first:
            log.info("waiting for %d recorded files to appear (e.g. %s)", len(recorded_first), recorded_first[0]["path"])
        while recorded_first and time.monotonic() < deadline and not self._stopping():
            time.sleep(0.05)
            for row in recorded_first:
                self._seen[key(row)] = files.identity(at(row))
            recorded_first = [row for row in recorded_first if self._seen[key(row)] is None]
        absent = [row for row in absent if self._seen[key(row)] is None]
        verdicts, alive = [], {}
        for row in absent:
            writer = row.get("writer")
            if writer not in alive:  # one look per writer
                alive[writer] = writer_alive(self.writers, writer, self.writer_timeout, files=files.files)
            if row["discovered_by"] in RECORDED_FIRST and alive[writer]:
                reason = f"recorded by its writer ({row['discovered_by']}), which has not made it appear yet: waiting"
                verdicts.append(Verdict(row, reason, Cause.WAITING, retryable=True))
            else:
                reason = ("not there: its writer stopped before it appeared, or it was removed since"
                          if row["discovered_by"] in RECORDED_FIRST else "file disappeared before it was read")
                verdicts.append(Verdict(row, f"{reason}; ingested if it appears", Cause.MISSING, retryable=True))
        gone = {key(row) for row in absent}
        return verdicts, [row for row in rows if key(row) not in gone]

    def _stopping(self) -> bool:
        return self.stop_requested is not None and self.stop_requested.is_set()

    def _write_readable(self, spark: SparkSession, rows: list[Row], places: dict[str, Places], files: LandedFiles) -> list[Verdict]:
        """Featurize and append ``rows``; returns the verdicts of the files that crashed the featurizing job.

        A failed job (a Python worker that died on a file, a JVM-side read error) is tried ``FEATURIZE_ATTEMPTS``
        times, then the rows are split in halves until the failing files are alone (tried that often again). A file
        that fails alone while a known-good probe image still goes through is quarantined as transient: the stream
        tries it again later ([stream] max_retries). If the probe fails too, the failure is not the files' fault and
        is raised (the stream stops, and the batch is replayed on restart: no verdict is made)."""
        failed, pending = [], [rows] if rows else []
        while pending:
            group = pending.pop()
            error = None
            # The whole chunk and a lone file get every try; the halves in between one each (a split costs a job,
            # and a crashed worker must load the model again).
            for _ in range(FEATURIZE_ATTEMPTS if group is rows or len(group) == 1 else 1):
                try:
                    self._write_group(spark, group, places, files)
                    error = None
                    break
                except JOB_FAILURES as exc:
                    if self._stopping():
                        raise StopRequested.ending(self.progress, self._micro_batch) from exc  # not the files' fault
                    if "SPARK_JOB_CANCELLED" in error_conditions(exc):
                        raise  # the query is stopping: that says nothing about the files
                    error = exc
                    log.warning("featurizing %d files failed: %s", len(group), _cause(exc))
            if error is None:
                continue
            if len(group) > 1:
                pending += [group[: len(group) // 2], group[len(group) // 2 :]]
            elif self._probe_works(spark):
                row = group[0]
                again = retryable(Cause.TRANSIENT, key(row)[1], self.max_retries)
                reason = (f"featurizing this file failed {FEATURIZE_ATTEMPTS} times, alone: {_cause(error)} "
                          f"(try {key(row)[1] + 1} of {self.max_retries + 1}{'; tried again later' if again else ''})")
                failed.append(Verdict(row, reason, Cause.TRANSIENT, retryable=again))
            else:
                raise error
        for verdict in failed:
            log.error("quarantined %s: %s", verdict.row["path"], verdict.reason)
        return failed

    def _write_group(self, spark: SparkSession, rows: list[Row], places: dict[str, Places], files: LandedFiles) -> None:
        """Read and featurize ``rows`` in one Spark job, collected through Arrow and paired with the ledger rows on the
        driver, then append one commit per table from here (:mod:`fruits.streaming.outcomes`); a ledger row that
        produced no row is quarantined with why."""
        with self.progress.phases.timed("list"):  # binaryFile looks at each remote file when the DataFrame is made
            job = self._job(spark, rows, files)
        with self.progress.phases.timed("featurize"):
            read = job.toArrow()  # the job: every core
        featurized, unread = featurized_rows(rows, read, places, self.featurizer.model_id)
        accepted, rejected = split_featurized(featurized)
        with self.progress.phases.timed("append"):
            append(self.features_table, accepted, self._micro_batch)
            for row in accepted.select(["file_id", "attempt"]).to_pylist():
                self._got[(row["file_id"], row["attempt"])] = FEATURIZED
            self._quarantine([self._unread_verdict(row, files) for row in unread], places, rejected)

    def _probe_works(self, spark: SparkSession) -> bool:
        """Whether the featurizing job works at all: one small image made here, through the same UDF."""
        probe = spark.createDataFrame([(PROBE_IMAGE,)], "content binary")
        try:
            row = probe.select(featurize_column(F.col("content"), self.featurizer, self.max_pixels).alias("r")).head()
        except JOB_FAILURES:
            return False
        return row["r"]["error"] is None

    def _job(self, spark: SparkSession, rows: list[Row], files: LandedFiles) -> DataFrame:
        """The featurizing job over exactly the rows' files, found there just before (:meth:`_absent`, which looked
        at each one: not again here): what the driver pairs with the ledger rows
        (:func:`fruits.streaming.outcomes.featurized_rows`): path, size and mtime as read, the content's hash, and
        ``result`` (``features`` or an ``error``). A file deleted since is absent from it (quarantined as
        disappeared); a local one is read by the Python worker (never more than ``max_bytes``), a remote one by
        ``binaryFile`` (:func:`fruits.model.udf.featurize_paths`). A file whose name the JVM cannot open is read
        through its alias (:meth:`LandedFiles.readable`), which the pairing maps back by ``file_id``. No join with
        the ledger rows here: a broadcast of driver-made rows is one more job per chunk (``bench/latency.py``)."""
        files.register(rows)
        paths = sorted({path for row in rows if (path := files.readable(at(row), self.landing))})
        return featurize_paths(spark, paths, self.featurizer, max_bytes=self.max_bytes, max_pixels=self.max_pixels,
                               partitions=self.partitions, still_there=lambda p: files.version(p) is not None)

    def _unread_verdict(self, row: Row, files: LandedFiles) -> Verdict:
        now = files.version(at(row))
        if now is None:
            return Verdict(row, "file disappeared before it was read; ingested if it appears", Cause.MISSING, True)
        if now[0] == 0:
            return Verdict(row, "empty file (0 bytes)", Cause.REJECTED)
        reason = "listed in the ledger but produced no row when read"
        return Verdict(row, reason, Cause.TRANSIENT, retryable(Cause.TRANSIENT, key(row)[1], self.max_retries))

    def _after_ingest(self, chunk: list[Row], places: dict[str, Places], files: LandedFiles) -> None:
        """Now that the chunk's outcomes are committed: archive or delete each featurized file, move each quarantined
        one to its quarantine place (never deleted). A file that is no longer the version that was read (size,
        mtime, inode) stays: it may still be written, and its newer version has its own ledger row. Symbolic links go
        first: each is stored as a copy of the bytes it leads to, which must still be there if their file, landed
        too, is moved in this chunk."""
        for row in sorted(chunk, key=lambda row: not files.is_link(at(row))):
            got = self._got.get(key(row))
            if got is None or (got != FEATURIZED and not Cause(got).moves_original):
                continue
            place = places[row["file_id"]]
            target = place.features if got == FEATURIZED else place.quarantine
            now, seen = files.identity(at(row)), self._seen.get(key(row))
            if target == source(row) or now is None or now != seen or not self._same_version(row, now):
                continue
            try:
                if target is None:
                    files.remove(at(row))
                elif not files.move_unchanged(at(row), target, now):
                    log.warning("could not move %s to %s; it stays where it is", source(row), target)
            except OSError as exc:  # the outcome is committed: a file left behind is only a cost, not a loss
                log.warning("could not move %s to %s: %s", source(row), target, exc)
        files.release([at(row) for row in chunk])  # read aliases of the files left where they were

    @staticmethod
    def _same_version(row: Row, identity: tuple[int, int, int]) -> bool:
        """Whether a file's ``identity`` is the version its ledger row describes (size, and mtime off object stores)."""
        return identity[0] == row["size_bytes"] and identity[1] in (-1, epoch_ms(row["modified_at"]))


def newest_outcome(*tables: Table) -> float:
    """The newest ``discovered_at`` of the outcome tables' rows (seconds since the epoch), from the files' Delta
    statistics (no scan). Statistics keep milliseconds, so one is added: the answer is never too early."""
    newest = 0.0
    for table in tables:
        actions = table.add_actions()
        if actions is None:
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
