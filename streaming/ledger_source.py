"""The ledger as a streaming source: ``spark.readStream.format("fruits_ledger")``, written with Spark 4's Python Data
Source API (``DataSourceStreamReader``).

An offset is a ledger (Delta) version: ``{"version": v}`` says "every row committed at a version <= v is planned".
A micro-batch ``(start, end]`` holds the rows the ledger's commits ``start + 1 .. end`` added (their add actions, read
with delta-rs' ``load_cdf``, which an append-only table needs no change data feed for), some 20,000 rows at most and
never part of a commit, so a replay after a crash reads exactly the same rows. A new checkpoint starts at version -1:
the whole ledger, whose rows with an outcome the sink drops (:mod:`fruits.streaming.sink`).

Why not Delta's own streaming source: to see a new ledger version, Spark's Delta reader builds a new snapshot, and
for a commit written by delta-rs (no ``.crc`` file) that is one Spark job per micro-batch with new rows: most of a
dropped photo's wait (``bench/latency.py``; docs/performance.md). Here the newest version is one small read of the
Delta log, on the driver, in the source's long-lived Python process.

Rows are read on the driver (``partitions``) and travel to the task inside the partition: executors never open the
ledger (no storage credentials for it there, on a cluster or on ``s3a://``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadLimit, ReadMaxRows, SupportsTriggerAvailableNow

from fruits.ledger import LEDGER_SCHEMA
from fruits.uris import rust_uri

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


def ledger_version(offset: dict) -> int:
    """The ledger version an offset stands for. Offsets of Delta's streaming source (checkpoints written before this
    source) are read conservatively: a replay of rows the sink already decided costs a lookup, never a duplicate."""
    if "version" in offset:
        return int(offset["version"])
    if offset.get("isStartingVersion", True):  # Delta's source was still reading its first snapshot
        return -1
    return int(offset["reservoirVersion"]) - 1  # that version may have been read in part: read it again


def _spark_schema() -> str:
    spark_types = {pa.string(): "string", pa.int64(): "bigint", pa.bool_(): "boolean"}
    columns = [f"{f.name} {spark_types.get(f.type, 'timestamp')}" for f in LEDGER_SCHEMA]
    return ", ".join(columns)


@dataclass
class LedgerRows(InputPartition):
    """One micro-batch's ledger rows, as Arrow IPC bytes (read on the driver)."""

    ipc: bytes


class LedgerSource(DataSource):
    """``format("fruits_ledger")``; options: ``path`` (the ledger's location, as Spark spells it) and
    ``maxRowsPerTrigger`` (default :data:`DEFAULT_ROWS_PER_TRIGGER`)."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> str:
        return _spark_schema()

    def streamReader(self, schema) -> "LedgerReader":
        return LedgerReader(self.options["path"], int(self.options.get("maxRowsPerTrigger", DEFAULT_ROWS_PER_TRIGGER)))


class LedgerReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Offsets are ledger versions; see the module docstring. Lives in the driver's source process."""

    def __init__(self, path: str, rows_per_trigger: int) -> None:
        self.uri = rust_uri(path)
        self.rows_per_trigger = max(1, rows_per_trigger)
        self._table = None
        self._target: int | None = None  # Trigger.AvailableNow: the newest version when the query started

    def _latest(self) -> int:
        """The ledger's newest version (reads only the log entries added since the last call)."""
        from deltalake import DeltaTable

        if self._table is None:
            self._table = DeltaTable(self.uri)
        else:
            self._table.update_incremental()
        return self._table.version()

    def initialOffset(self) -> dict:
        return {"version": -1}

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.rows_per_trigger)

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = self._latest()

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict:
        begin, latest = ledger_version(start), self._latest()
        if self._target is not None:
            latest = min(latest, self._target)
        if isinstance(limit, ReadMaxRows) and latest > begin:
            latest = self._last_within(begin, latest, limit.max_rows)
        return {"version": max(begin, latest)}

    def _last_within(self, begin: int, latest: int, max_rows: int) -> int:
        """The newest version ``v <= latest`` such that the commits ``begin + 1 .. v`` add at most ``max_rows`` rows
        (at least one commit), from the commits' own row counts."""
        newest = self._table.version()  # may be past ``latest`` (Trigger.AvailableNow's target)
        if newest - begin > COUNTED_COMMITS:
            return begin + BEHIND_COMMITS_PER_TRIGGER
        counts = {c["version"]: _commit_rows(c) for c in self._table.history(limit=newest - begin)}
        end, total = begin, 0
        for version in range(begin + 1, latest + 1):
            rows = counts.get(version)
            rows = max_rows if rows is None else rows  # unknown: a micro-batch of its own
            if end > begin and total + rows > max_rows:
                break
            end, total = version, total + rows
        return end

    def partitions(self, start: dict, end: dict) -> list[LedgerRows]:
        begin, last = ledger_version(start), ledger_version(end)
        if last <= begin:
            return []
        rows = self._rows_between(begin, last)
        if rows.num_rows == 0:
            return []
        return [LedgerRows(_ipc(rows.slice(at, ROWS_PER_PARTITION))) for at in range(0, rows.num_rows, ROWS_PER_PARTITION)]

    def _rows_between(self, begin: int, last: int) -> pa.Table:
        """The rows the commits ``begin + 1 .. last`` added (inserts only: a compaction adds no rows), or, if those
        commits can no longer be read (their files vacuumed, their log entries expired), every row of the ledger
        now: a superset, whose rows with an outcome the sink drops (and rows newer than ``last`` come again in a
        later micro-batch, where the sink finds them decided)."""
        from deltalake.exceptions import DeltaError

        self._latest()
        try:
            # delta-rs reads no change data of version 0 (the ledger's creation): its rows are read as a snapshot
            parts = [_rows_at(self.uri, 0)] if begin < 0 else []
            if max(begin + 1, 1) <= last:
                changes = pa.table(self._table.load_cdf(starting_version=max(begin + 1, 1), ending_version=last))
                inserted = pc.equal(changes.column("_change_type").cast(pa.string()), "insert")
                parts.append(changes.select(LEDGER_SCHEMA.names).cast(ROWS_SCHEMA).filter(inserted))
            changes = pa.concat_tables(parts)
        except (DeltaError, pa.ArrowException, OSError) as exc:  # delta-rs fails on a missing file while reading
            log.warning("ledger commits %d..%d unreadable (%s): reading the whole ledger", begin + 1, last, exc)
            changes = _rows_at(self.uri, self._table.version())
        return changes

    def read(self, partition: LedgerRows) -> Iterator[pa.RecordBatch]:
        yield from pa.ipc.open_stream(partition.ipc)

    def commit(self, end: dict) -> None:
        """Nothing to release: the ledger keeps its rows."""


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


def _rows_at(uri: str, version: int) -> pa.Table:
    """Every row of the ledger at ``version``."""
    from deltalake import DeltaTable

    return pa.table(DeltaTable(uri, version=version).to_pyarrow_table()).select(LEDGER_SCHEMA.names).cast(ROWS_SCHEMA)
