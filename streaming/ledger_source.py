"""The ledger as a streaming source: ``spark.readStream.format("fruits_ledger")``, written with Spark 4's Python Data
Source API (``DataSourceStreamReader``).

An offset is a ledger (Delta) version: ``{"version": v}`` says "every row committed at a version <= v is planned".
A micro-batch ``(start, end]`` holds the rows the ledger's commits ``start + 1 .. end`` added (their add actions, read
with delta-rs' ``load_cdf``, which an append-only table needs no change data feed for), some 20,000 rows at most and
never part of a commit, so a replay after a crash reads exactly the same rows. A new checkpoint first reads the
ledger's current snapshot, a few of its data files per micro-batch (``{"snapshot": v, "files": k}``: the first k
files of version v, in path order), then the commits after it; the sink drops the rows that already have an outcome
(:mod:`fruits.streaming.sink`).

Why not Delta's own streaming source: to see a new ledger version, Spark's Delta reader builds a new snapshot, and
for a commit written by delta-rs (no ``.crc`` file) that is one Spark job per micro-batch with new rows: most of a
dropped photo's wait (``bench/latency.py``; docs/performance.md). Here the newest version is one small read of the
Delta log, on the driver, in the source's long-lived Python process.

Rows are read on the driver (``partitions``) and travel to the task inside the partition: executors never open the
ledger (no storage credentials for it there, on a cluster or on ``s3a://``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadLimit, ReadMaxRows, SupportsTriggerAvailableNow

from fruits.errors import Failed
from fruits.home.tables import LEDGER, LEDGER_SCHEMA, DeltaError, Table

log = logging.getLogger("fruits.ledger_source")

NAME = "fruits_ledger"
# Ledger rows per micro-batch at most (a commit is never split: one bigger than this is a micro-batch alone). The sink
# collects them and featurizes them in chunks of [stream] max_files_per_trigger.
DEFAULT_ROWS_PER_TRIGGER = 20_000
# Row counts come from the newest commits' commitInfo; a stream further behind than this many commits takes this
# many commits per micro-batch instead (discovery commits hold at most [discovery] max_rows_per_commit rows each).
COUNTED_COMMITS = 1000
BEHIND_COMMITS_PER_TRIGGER = 10
# Rows per partition: a partition carries its rows to the task, and Spark warns about tasks above 1 MB.
ROWS_PER_PARTITION = 4000
# What ``read`` yields: the ledger's columns, nullable (Spark checks the batches against the source's schema, where
# every column is nullable).
ROWS_SCHEMA = pa.schema([field.with_nullable(True) for field in LEDGER_SCHEMA])


@dataclass(frozen=True)
class Position:
    """Where an offset stands: every row of the versions <= ``version`` is planned, or, while a new checkpoint reads
    the snapshot of ``version``, only its first ``files`` data files (in path order)."""

    version: int
    files: int | None = None

    @property
    def in_snapshot(self) -> bool:
        """Before the commits after a snapshot: a new checkpoint (version -1) or one part-way through its snapshot."""
        return self.version < 0 or self.files is not None

    def offset(self) -> dict:
        return {"version": self.version} if self.files is None else {"snapshot": self.version, "files": self.files}


def position(offset: dict) -> Position:
    """The :class:`Position` of an offset. Offsets of Delta's streaming source (checkpoints written before this
    source) are read conservatively: a replay of rows the sink already decided costs a lookup, never a duplicate."""
    if "snapshot" in offset:
        return Position(int(offset["snapshot"]), int(offset["files"]))
    if "version" in offset:
        return Position(int(offset["version"]))
    if offset.get("isStartingVersion", True):  # Delta's source was still reading its first snapshot: start again
        return Position(-1)
    return Position(int(offset["reservoirVersion"]) - 1)  # that version may have been read in part: read it again


def _take(counts: list[int], done: int, max_rows: int | None) -> int:
    """How many of ``counts`` are planned after ``done`` of them, adding at least one and at most ``max_rows`` rows."""
    end, total = done, 0
    while end < len(counts):
        if end > done and max_rows is not None and total + counts[end] > max_rows:
            break
        total += counts[end]
        end += 1
    return end


class LedgerUnreadable(Failed):
    """Commits the checkpoint still has to read are gone (their files vacuumed, their log entries expired)."""


def _spark_schema() -> str:
    spark_types = {pa.string(): "string", pa.int64(): "bigint", pa.bool_(): "boolean", pa.binary(): "binary"}
    columns = [f"{f.name} {spark_types.get(f.type, 'timestamp')}" for f in LEDGER_SCHEMA]
    return ", ".join(columns)


@dataclass
class LedgerRows(InputPartition):
    """One micro-batch's ledger rows, as Arrow IPC bytes (read on the driver)."""

    ipc: bytes


class LedgerSource(DataSource):
    """``format("fruits_ledger")``; options: ``path`` (the ledger's location, as Spark spells it),
    ``storage_options`` (a JSON object: the home's storage options, :func:`options_for`) and
    ``maxRowsPerTrigger`` (default :data:`DEFAULT_ROWS_PER_TRIGGER`)."""

    @classmethod
    def name(cls) -> str:
        return NAME

    @staticmethod
    def options_for(ledger: Table) -> dict[str, str]:
        """The options that name ``ledger`` to the source, which reads it in a process of its own: its location and
        its storage options (no credentials: those come from the standard AWS variables or chain)."""
        return {"path": ledger.location, "storage_options": json.dumps(ledger.storage_options)}

    def schema(self) -> str:
        return _spark_schema()

    def streamReader(self, schema) -> "LedgerReader":
        ledger = Table(self.options["path"], LEDGER, storage_options=json.loads(self.options.get("storage_options") or "{}"))
        return LedgerReader(ledger, int(self.options.get("maxRowsPerTrigger", DEFAULT_ROWS_PER_TRIGGER)))


class LedgerReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Offsets are ledger versions; see the module docstring. Lives in the driver's source process."""

    def __init__(self, ledger: Table, rows_per_trigger: int) -> None:
        self.ledger = ledger
        self.rows_per_trigger = max(1, rows_per_trigger)
        self._table = None
        self._target: int | None = None  # Trigger.AvailableNow: the newest version when the query started
        self._rows_of: dict[int, int | None] = {}  # rows each commit added (None: not said by its commitInfo)
        self._snapshots: dict[int, list[tuple[str, int]]] = {}  # the snapshot a new checkpoint reads

    def _latest(self) -> int:
        """The ledger's newest version (reads only the log entries added since the last call)."""
        self._table = self.ledger.latest()
        if self._table is None:
            raise FileNotFoundError(f"no ledger at {self.ledger.location}")
        return self._table.version()

    def initialOffset(self) -> dict:
        return Position(-1).offset()

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.rows_per_trigger)

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = self._latest()

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict:
        at, latest = position(start), self._latest()
        if self._target is not None:
            latest = min(latest, self._target)
        max_rows = limit.max_rows if isinstance(limit, ReadMaxRows) else None
        if at.in_snapshot:
            snapshot = latest if at.version < 0 else at.version
            counts = [rows for _, rows in self._snapshot_files(snapshot)]
            end = _take(counts, at.files or 0, max_rows)
            return Position(snapshot, None if end >= len(counts) else end).offset()
        if latest > at.version and max_rows is not None:
            latest = self._last_within(at.version, latest, max_rows)
        return Position(max(at.version, latest)).offset()

    def _last_within(self, begin: int, latest: int, max_rows: int) -> int:
        """The newest version ``v <= latest`` such that the commits ``begin + 1 .. v`` add at most ``max_rows`` rows
        (at least one commit), from the commits' own row counts."""
        if latest - begin > COUNTED_COMMITS:
            return min(begin + BEHIND_COMMITS_PER_TRIGGER, latest)
        self._count_rows(begin + 1)
        counts = [self._rows_of.get(v) for v in range(begin + 1, latest + 1)]
        counts = [max_rows if rows is None else rows for rows in counts]  # unknown: a micro-batch of its own
        return begin + _take(counts, 0, max_rows)

    def _count_rows(self, oldest: int) -> None:
        """Learn the row counts of the commits from ``oldest`` to the newest (from their commitInfo; counts never
        change, so each commit is read once)."""
        newest = self._table.version()
        missing = [v for v in range(oldest, newest + 1) if v not in self._rows_of]
        if not missing:
            return
        limit = newest - missing[0] + 1
        commits = self._table.history(limit)
        # deltalake numbers the entries down from the table's version, but returns any commit newer than it too
        top = max(0, newest - limit + 1) + len(commits) - 1
        for index, commit in enumerate(commits):
            self._rows_of[top - index] = _commit_rows(commit)

    def _snapshot_files(self, version: int) -> list[tuple[str, int]]:
        """The data files of the ledger at ``version``, in path order, with their row counts."""
        if version not in self._snapshots:
            actions = self.ledger.add_actions(version)
            files = zip(actions.column("path").to_pylist(), actions.column("num_records").to_pylist())
            self._snapshots = {version: sorted((path, rows or 0) for path, rows in files)}
        return self._snapshots[version]

    def partitions(self, start: dict, end: dict) -> list[LedgerRows]:
        at, to = position(start), position(end)
        if at.in_snapshot and to.version >= 0:  # (part of) a snapshot
            files = self._snapshot_files(to.version)
            chosen = [path for path, _ in files[at.files or 0 : len(files) if to.files is None else to.files]]
            rows = self.ledger.read_files(chosen, LEDGER_SCHEMA.names, schema=ROWS_SCHEMA) if chosen else None
        else:
            rows = self._rows_between(at.version, to.version) if to.version > at.version else None
        if rows is None or rows.num_rows == 0:
            return []
        starts = range(0, rows.num_rows, ROWS_PER_PARTITION)
        return [LedgerRows(_ipc(rows.slice(start, ROWS_PER_PARTITION))) for start in starts]

    def _rows_between(self, begin: int, last: int) -> pa.Table:
        """The rows the commits ``begin + 1 .. last`` added (inserts only: a compaction adds no rows). Raises
        :class:`LedgerUnreadable` if they can no longer be read; any other error after the third try."""
        for attempt in range(3):
            try:
                self._latest()
                changes = self.ledger.changes(begin + 1, last, table=self._table).read_all()
                inserted = pc.equal(changes.column("_change_type").cast(pa.string()), "insert")
                return _conform(changes, ROWS_SCHEMA).filter(inserted)
            except (DeltaError, pa.ArrowException, OSError) as exc:
                text = str(exc)
                if _gone(self.ledger, begin + 1, last):
                    raise LedgerUnreadable(
                        f"the ledger's commits {begin + 1}..{last}, which this checkpoint has still to read, are gone "
                        f"({text[:200]}). Stop the stream, delete HOME/checkpoints/ingest and start it again: a new "
                        "checkpoint reads the ledger's current snapshot, and rows that already have an outcome are "
                        "skipped (nothing is featurized twice)."
                    ) from exc
                if attempt == 2:
                    raise
                log.warning("reading ledger commits %d..%d failed (%s); trying again", begin + 1, last, text[:200])
                time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def read(self, partition: LedgerRows) -> Iterator[pa.RecordBatch]:
        yield from pa.ipc.open_stream(partition.ipc)

    def commit(self, end: dict) -> None:
        """Nothing to release: the ledger keeps its rows."""


def _gone(ledger: Table, first: int, last: int) -> bool:
    """:meth:`fruits.home.tables.Table.commits_gone`, asked after a failed read; False if it cannot be told now (the
    storage does not answer either), so the read is tried again."""
    try:
        return ledger.commits_gone(first, last)
    except (pa.ArrowException, OSError, ValueError):
        return False


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` with ``schema``'s columns, in its order and types; columns of rows written before they were added to
    the ledger are nulls."""
    names = set(rows.column_names)
    return pa.table(
        [rows.column(f.name).cast(f.type) if f.name in names else pa.nulls(rows.num_rows, f.type) for f in schema],
        schema=schema,
    )


def _ipc(rows: pa.Table) -> bytes:
    """``rows`` as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, ROWS_SCHEMA) as writer:
        writer.write_table(rows)
    return sink.getvalue().to_pybytes()


def _commit_rows(commit: dict) -> int | None:
    """Rows a commit added, from its commitInfo (delta-rs and Spark name the metric differently), or None."""
    metrics = commit.get("operationMetrics") or {}
    value = metrics.get("num_added_rows", metrics.get("numOutputRows"))
    if value is None:
        return 0 if commit.get("operation") in ("CREATE TABLE", "OPTIMIZE", "SET TBLPROPERTIES") else None
    return int(value)
