"""Outcome rows as Arrow tables, appended to the features and quarantine Delta tables with delta-rs.

The sink collects each featurized group once (``DataFrame.toArrow``: the one Spark job that reads and featurizes the
files) and appends its rows from the driver: a delta-rs commit costs milliseconds, where Spark's Delta writer ran a
write job, a snapshot update and its own commit protocol per table and micro-batch (``bench/latency.py``,
``bench/ingest_throughput.py``). Readers see the same tables: same schema, statistics on every column (data skipping
on ``discovered_at`` keeps working), and the change data feed that the PCA refit reads (appends need no change files).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from fruits.home.names import alias_file_id
from fruits.home.tables import FEATURES, QUARANTINE, Table
from fruits.home.verdicts import Cause
from fruits.model.udf import features_list

FEATURES_ARROW = FEATURES.schema
QUARANTINE_ARROW = QUARANTINE.schema
TIMESTAMP = pa.timestamp("us", tz="UTC")
# Columns an outcome row takes from its ledger row as they are.
FROM_LEDGER = ["path", "label", "size_bytes", "modified_at", "file_id", "discovered_at", "attempt"]
# The key of each commit's commitInfo that names the stream's micro-batch (bench/latency.py reads it).
MICRO_BATCH_KEY = "fruits.micro_batch"


def append(table: Table, rows: pa.Table, micro_batch: int | None = None) -> None:
    """Append ``rows`` to the outcome ``table`` in one commit, nothing when there are none; the commit records
    ``micro_batch`` in its commitInfo."""
    metadata = {MICRO_BATCH_KEY: str(micro_batch)} if micro_batch is not None else None
    table.append(rows, metadata=metadata)


@dataclass(frozen=True)
class Verdict:
    """A quarantine verdict on one ledger row: the reason shown to people, its :class:`~fruits.home.verdicts.Cause`, and
    whether the stream tries the file again by itself."""

    row: Mapping[str, Any]
    reason: str
    cause: Cause
    retryable: bool = False


@dataclass(frozen=True)
class Places:
    """Where a file's bytes will be once its outcome is committed, by outcome: ``features`` (the archive, the
    landing path when kept, None when deleted) or ``quarantine`` (HOME/quarantine/..., or the landing path when
    kept: a quarantined original is never deleted)."""

    features: str | None
    quarantine: str | None


def quarantine_rows(verdicts: Sequence[Verdict], places: Mapping[str, Places], model_id: str) -> pa.Table:
    """Quarantine rows made from ledger rows alone (no content hash, since the bytes were not read), each with the
    file's quarantine place (``places`` by ``file_id``; none for a file that is not there)."""
    rows = [verdict.row for verdict in verdicts]
    now = datetime.now(timezone.utc)
    columns = _from_ledger(rows) | {
        "content_sha256": pa.nulls(len(rows), pa.string()),
        "ingested_at": pa.array([now] * len(rows), TIMESTAMP),
        "reason": [verdict.reason for verdict in verdicts],
        "model_id": [model_id] * len(rows),
        "stored_path": [
            places[v.row["file_id"]].quarantine if v.cause.moves_original else None for v in verdicts
        ],
        "cause": [verdict.cause.value for verdict in verdicts],
        "retryable": [verdict.retryable for verdict in verdicts],
    }
    return pa.table({field.name: columns[field.name] for field in QUARANTINE_ARROW}, schema=QUARANTINE_ARROW)


def featurized_rows(
    rows: Sequence[Mapping[str, Any]], read: pa.Table, places: Mapping[str, Places], model_id: str
) -> tuple[pa.Table, list[Mapping[str, Any]]]:
    """Pair the featurizing job's collected rows (``path``, ``length``, ``mtime_ms``, ``content_sha256``,
    ``result``) with the ledger ``rows`` of the group, by path; returns (a featurized group for
    :func:`split_featurized`, the ledger rows whose file produced no row).

    A file whose size (or, off object stores, mtime) is not the one its ledger row recorded changed after its
    discovery: its row gets that as its error instead of the features, and its new version has its own ledger row.
    (On an object store the server sets the mtime at upload, after `fruits drop` recorded the row: a version there is
    (path, size, ETag), so only the size is compared.)"""
    # by path; a file read through an alias (fruits.home.names.alias_path: a name the JVM cannot open) by its file_id
    index = {alias_file_id(path) or path: i for i, path in enumerate(read.column("path").to_pylist())}
    lengths, mtimes = read.column("length").to_pylist(), read.column("mtime_ms").to_pylist()
    errors = pc.struct_field(read.column("result"), "error").to_pylist()
    matched, taken, unread = [], [], []
    for row in rows:
        i = index.get(row["file_id"], index.get(source(row)))
        if i is None:
            unread.append(row)
            continue
        object_store = row["path"].startswith(("s3a://", "s3://"))
        if lengths[i] != row["size_bytes"] or (not object_store and mtimes[i] != epoch_ms(row["modified_at"])):
            modified = datetime.fromtimestamp(mtimes[i] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            error = (f"changed after it was discovered (now {lengths[i]} bytes, modified {modified}); its new version "
                     "has its own ledger row")
            cause = Cause.CHANGED
        else:
            error = errors[i]
            cause = None if error is None else Cause.REJECTED
        matched.append((row, error, cause))
        taken.append(i)
    picked = read.take(pa.array(taken, pa.int64()))
    ok = pa.array([error is None for _, error, _ in matched], pa.bool_())
    features = features_list(picked.column("result"))
    place = [places[row["file_id"]] for row, _, _ in matched]
    columns = _from_ledger([row for row, _, _ in matched]) | {
        "content_sha256": picked.column("content_sha256"),
        "ingested_at": pa.array([datetime.now(timezone.utc)] * len(matched), TIMESTAMP),
        "stored_path": [
            p.features if cause is None else p.quarantine if cause.moves_original else None
            for p, (_, _, cause) in zip(place, matched)
        ],
        "model_id": [model_id] * len(matched),
        "features": pc.if_else(ok, features, pa.nulls(len(matched), features.type)),
        "error": [error for _, error, _ in matched],
        "cause": pa.array([cause.value if cause else None for _, _, cause in matched], pa.string()),
        "retryable": pa.array([False] * len(matched), pa.bool_()),
    }
    return pa.table(columns), unread


def source(row: Mapping[str, Any]) -> str:
    """Where a ledger row's bytes are read: ``read_from`` (a retry of a file kept in quarantine), else its path."""
    return row.get("read_from") or row["path"]


def _from_ledger(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The columns outcome rows take from their ledger rows (:data:`FROM_LEDGER`), timestamps as aware UTC."""
    columns: dict[str, Any] = {name: [row.get(name) for row in rows] for name in FROM_LEDGER}
    columns["attempt"] = pa.array([value or 0 for value in columns["attempt"]], pa.int64())
    for name in ("modified_at", "discovered_at"):
        columns[name] = pa.array([_utc(value) for value in columns[name]], TIMESTAMP)
    return columns


def split_featurized(featurized: pa.Table) -> tuple[pa.Table, pa.Table]:
    """A collected featurized group (outcome columns, ``features``, ``error``, ``model_id``) as (features rows,
    quarantine rows): a row with an ``error`` is quarantined with it as its reason."""
    ok = pc.is_null(featurized.column("error"))
    features = featurized.filter(ok).select(FEATURES_ARROW.names)
    rejected = featurized.filter(pc.invert(ok))
    rejected = rejected.append_column("reason", rejected.column("error")).select(QUARANTINE_ARROW.names)
    return _conform(features, FEATURES_ARROW), _conform(rejected, QUARANTINE_ARROW)


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` with the table's exact schema (types and nullability), so delta-rs sees the table's own schema."""
    return pa.Table.from_arrays([rows.column(f.name).cast(f.type) for f in schema], schema=schema)


def epoch_ms(timestamp: datetime) -> int:
    """A timestamp in whole ms since the epoch, exactly (a naive one is local time, as for ``timestamp()``)."""
    return int(timestamp.replace(microsecond=0).timestamp()) * 1000 + timestamp.microsecond // 1000


def _utc(value: datetime) -> datetime:
    """A collected timestamp as an aware UTC datetime (PySpark's ``collect`` gives naive local times; Arrow aware)."""
    return value.astimezone(timezone.utc)
