"""Compaction of the tables the stream appends to: Delta ``OPTIMIZE`` (bin-packing) of ``tables/features``,
``tables/quarantine`` and the file ledger ``tables/files``, run by ``fruits refit-pca`` before it fits (see :func:`fruits.batch.refit_pca.refit_pca`).

Every micro-batch appends a few small Parquet files to each table; with a 2 s trigger that is thousands of tiny
files a day, which every full scan (the refit's fit and projection) and every snapshot rebuild then pays for.
The periodic batch compacts them instead of the stream (Delta's auto-compaction would run synchronously after the
stream's own commits and add its latency to every micro-batch).

Safety while the stream keeps appending: ``OPTIMIZE`` only rewrites existing files and commits with
``dataChange=false`` (snapshot isolation), and the stream's appends are blind appends (they read no files), so the
two never conflict: appends committed meanwhile are kept and are simply not compacted this time. The change data
feed has no rows for an ``OPTIMIZE`` commit, so the incremental refit still sees only the appended rows. The
replaced small files stay on storage (time travel, change data feed) until a ``VACUUM``.

On S3 with Delta's default log store, only one driver may write a table (two drivers can overwrite each other's
commit). Compaction then writes the stream's tables from a second driver, so it is skipped there unless a
multi-cluster log store is configured (``spark.delta.logStore.s3a.impl``, e.g. ``io.delta.storage.S3DynamoDBLogStore``).

A failure to compact never fails the refit: it is logged as a warning and recorded in the outcome.
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import TYPE_CHECKING, Any

from fruits.config import CompactionConfig
from fruits.home.home import Home
from fruits.home.tables import Table

if TYPE_CHECKING:  # Spark is imported when compacting only: `fruits status` uses describe() without it
    from pyspark.sql import SparkSession

log = logging.getLogger("fruits.compaction")

MIB = 1024 * 1024


def compact_tables(spark: SparkSession | None, home: Home) -> dict[str, dict[str, Any]]:
    """Compact the features, quarantine and file ledger tables where it is worth it (the ledger gets a small file per
    discovery commit); one outcome per table (see :func:`compact_table`). ``spark`` None: with delta-rs
    (:func:`compact_tables_local`)."""
    settings = home.config.compaction
    tables = [home.features, home.quarantine, home.ledger]
    if not settings.enabled:
        return {table.name: {"compacted": False, "skipped": "compaction disabled"} for table in tables}
    return {table.name: compact_table(spark, table, settings) for table in tables}


def compact_tables_local(home: Home) -> dict[str, dict[str, Any]]:
    """:func:`compact_tables` without a JVM: delta-rs's ``optimize.compact`` (bin-packing into files of at most
    ``target_file_mb``, committed with ``dataChange=false`` like Spark's ``OPTIMIZE``: the change data feed has no
    row for it, and the stream's blind appends do not conflict with it), under the same rule."""
    return compact_tables(None, home)


def compact_table(spark: SparkSession | None, table: Table, settings: CompactionConfig) -> dict[str, Any]:
    """``OPTIMIZE`` the Delta ``table`` if it holds at least ``min_extra_files`` more files than its size needs at
    ``target_file_mb`` (with Spark, or with delta-rs when ``spark`` is None). Returns ``{"compacted": True,
    "files_before", "files_after", ...}``, or ``{"compacted": False, "skipped": why}``, or ``{"compacted": False,
    "error": what}``: it never raises."""
    try:
        return _compact(spark, table, settings.min_extra_files, settings.target_file_mb)
    except Exception as exc:  # a failed compaction must not fail the refit; the small files stay until next time
        error = _error_text(exc)
        log.warning("compaction of %s failed, the refit goes on without it: %s", table.location, error)
        return {"compacted": False, "error": error}


def _compact(spark: SparkSession | None, table: Table, min_extra_files: int, target_mb: float) -> dict[str, Any]:
    # delta-rs has no Spark log store setting to consult: on S3 it leaves the stream's tables to the stream.
    conf_get = spark.conf.get if spark is not None else lambda key, default=None: default
    unsafe = multi_writer_unsafe(table.location, conf_get)
    if unsafe:
        return {"compacted": False, "skipped": unsafe}
    counted = _files_and_bytes(table)
    if counted is None:
        return {"compacted": False, "skipped": "no table yet"}
    files, size = counted
    target = max(1, int(target_mb * MIB))
    extra = files - max(1, math.ceil(size / target))
    figures = {"files_before": files, "bytes": size, "extra_files": max(extra, 0)}
    if extra < min_extra_files:
        return {"compacted": False, "skipped": f"{max(extra, 0)} extra files < min_extra_files {min_extra_files}", **figures}
    started = time.perf_counter()
    # Spark's OPTIMIZE, or delta-rs's compact: files smaller than ``target`` merged into files of at most ``target``
    removed, added = table.optimize(spark, target_size=target) if spark is not None else table.compact(target_size=target)
    return {**figures, **_outcome(table.location, files, removed, added, started)}


def _files_and_bytes(table: Table) -> tuple[int, int] | None:
    """Data files and bytes of the table's current snapshot, read from its Delta log with delta-rs (no Spark job:
    a refit asks this of three tables each time, and mostly finds nothing to compact), or None if there is none."""
    actions = table.add_actions()
    if actions is None:
        return None
    sizes = actions.column("size_bytes").to_pylist()
    return len(sizes), sum(sizes)


def _outcome(location: str, files: int, removed: int, added: int, started: float) -> dict[str, Any]:
    outcome = {
        "compacted": removed > 0,
        # The snapshot OPTIMIZE worked on; appends committed meanwhile come on top of it.
        "files_after": files - removed + added,
        "files_removed": removed,
        "files_added": added,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if not removed:  # every small file alone in its bin: OPTIMIZE committed nothing
        outcome["skipped"] = "OPTIMIZE found no files to merge"
        return outcome
    log.info("compacted %s: %d -> %d files in %.1f s", location, files, outcome["files_after"], outcome["seconds"])
    return outcome


def _error_text(exc: Exception) -> str:
    """The first line of an error; for a Java one (Py4JJavaError), the Java exception's class and message."""
    java = getattr(exc, "java_exception", None)
    text = str(java.toString()) if java is not None else f"{type(exc).__name__}: {exc}"
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def multi_writer_unsafe(location: str, conf_get) -> str | None:
    """Why a second driver must not write the table at ``location`` (S3 without a multi-cluster log store), or None.

    ``conf_get(key, default)`` reads a Spark setting (``spark.conf.get``)."""
    match = re.match(r"^(s3[an]?)://", location)
    if not match:
        return None
    scheme = match.group(1)
    if conf_get(f"spark.delta.logStore.{scheme}.impl", None) or conf_get("spark.delta.logStore.class", None):
        return None
    return (
        f"{scheme}:// with Delta's single-driver log store: the stream is the only safe writer "
        f"(set spark.delta.logStore.{scheme}.impl to a multi-cluster log store to compact from the refit)"
    )


def describe(compaction: dict[str, dict[str, Any]]) -> str:
    """One phrase per table, for the refit's log line: ``features 62 -> 2 files, quarantine skipped (...)``."""
    parts = []
    for name, outcome in compaction.items():
        if outcome.get("compacted"):
            parts.append(f"{name} {outcome['files_before']} -> {outcome['files_after']} files")
        elif "error" in outcome:
            parts.append(f"{name} failed ({outcome['error']})")
        else:
            parts.append(f"{name} skipped ({outcome.get('skipped', 'nothing to compact')})")
    return ", ".join(parts)
