"""Homes made before the file ledger: their outcome rows get a ledger row each, then the ledger's columns, so the
first stream with the ledger finds those files already decided and featurizes none of them again.

Adoption depends on what is actually un-adopted (outcome rows without a ``file_id``, told by the Delta statistics'
null counts), not on whether the ledger exists: ``fruits serve`` and ``fruits drop`` create the ledger on first use,
and a crash may fall between the ledger's creation and the adoption. Its two steps are idempotent, so a crash between
them is finished by the next start: the ledger only gets the ``file_id`` values it lacks, and only rows without a
``file_id`` are linked."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits.home.home import Home
from fruits.home.tables import Table

log = logging.getLogger("fruits.stream")


def file_id_column(path: Column, size: Column, modified_at: Column) -> Column:
    """:func:`fruits.home.ledger.file_id` in Spark SQL: the first 32 hex digits of SHA-256 over path, size and mtime (ms)."""
    text = F.concat_ws("\n", path, size.cast("string"), F.unix_millis(modified_at).cast("string"))
    return F.substring(F.sha2(text, 256), 1, 32)


def unadopted(table: Table) -> bool:
    """Whether the outcome ``table`` may hold rows without a ``file_id``, from its files' Delta statistics (no scan):
    a null count above 0, or a file without one (e.g. written before the column was added)."""
    actions = table.add_actions()
    column = "null_count.file_id"
    if actions is None or not actions.num_rows:
        return False
    if column not in actions.column_names:
        return True
    counts = actions.column(column)
    return counts.null_count > 0 or (pc.max(counts).as_py() or 0) > 0


def record_in_ledger(spark: SparkSession, home: Home) -> int:
    """Step 1: a ledger row (``discovered_by`` "migration") for each file version of the outcome rows without a
    ``file_id``, if the ledger has none for it yet. Returns how many rows it appended."""
    ledger = home.ledger
    ledger.ensure(spark)
    legacy = _legacy_rows(spark, home).select(
        file_id_column(F.col("path"), F.col("size_bytes"), F.col("modified_at")).alias("file_id"),
        "path", "label", "size_bytes", "modified_at", F.col("ingested_at").alias("discovered_at"),
        F.lit("migration").alias("discovered_by"), F.lit(False).alias("overwrites"),
    )
    known = ledger.frame(spark).select("file_id")
    new = legacy.dropDuplicates(["file_id"]).join(known, "file_id", "left_anti").localCheckpoint()
    count = new.count()
    if count:
        ledger.write_frame(new, mode="append")
    return count


def link_to_ledger(spark: SparkSession, home: Home) -> int:
    """Step 2: the outcome rows without a ``file_id`` get their ledger link (``file_id``, ``discovered_at``,
    ``stored_path``). Appends no ledger row: returns 0."""
    for table in (home.features, home.quarantine):
        table.update(
            spark,
            where=F.col("file_id").isNull(),
            set={
                "file_id": file_id_column(F.col("path"), F.col("size_bytes"), F.col("modified_at")),
                "discovered_at": F.col("ingested_at"),
                "stored_path": F.col("path"),
            },
        )
    return 0


ADOPTION_STEPS: tuple[Callable[[SparkSession, Home], int], ...] = (record_in_ledger, link_to_ledger)


def adopt_legacy_rows(
    spark: SparkSession, home: Home, steps: Sequence[Callable[[SparkSession, Home], int]] = ADOPTION_STEPS
) -> int:
    """Adopt the outcome rows without a ``file_id``, if there are any (see the module docstring): run ``steps`` (tests
    run a prefix of :data:`ADOPTION_STEPS`, as a crash after it would leave the home). Returns how many ledger rows
    were appended."""
    if not any(unadopted(table) for table in (home.features, home.quarantine)):
        return 0
    count = sum(step(spark, home) for step in steps)
    if count:
        log.info("adopted %d files ingested before the file ledger (none is featurized again)", count)
    return count


def _legacy_rows(spark: SparkSession, home: Home) -> DataFrame:
    """The outcome rows (features and quarantine) without a ``file_id``."""
    frames = [
        table.frame(spark).where(F.col("file_id").isNull())
        .select("path", "label", "size_bytes", "modified_at", "ingested_at")
        for table in (home.features, home.quarantine)
    ]
    return frames[0].unionByName(frames[1])
