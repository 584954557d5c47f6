"""Homes made before the file ledger: their outcome rows get the ledger's columns, and the ledger a row for each,
so the first stream with the ledger finds those files already decided and featurizes none of them again."""

from __future__ import annotations

import logging

from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

from fruits.config import Config
from fruits.ledger import ensure_ledger
from fruits.uris import rust_uri

log = logging.getLogger("fruits.stream")


def file_id_column(path: Column, size: Column, modified_at: Column) -> Column:
    """:func:`fruits.ledger.file_id` in Spark SQL: the first 32 hex digits of SHA-256 over path, size and mtime (ms)."""
    text = F.concat_ws("\n", path, size.cast("string"), F.unix_millis(modified_at).cast("string"))
    return F.substring(F.sha2(text, 256), 1, 32)


def adopt_legacy_rows(spark: SparkSession, config: Config) -> int:
    """Give outcome rows without a ``file_id`` their ledger link and a ledger row (once: only while the home has no
    ledger yet). Returns how many rows were adopted."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        DeltaTable(rust_uri(config.files_table))
        return 0
    except TableNotFoundError:
        pass
    from delta.tables import DeltaTable as SparkDeltaTable

    adopted = None
    for table in (config.features_table, config.quarantine_table):
        SparkDeltaTable.forPath(spark, table).update(
            condition=F.col("file_id").isNull(),
            set={
                "file_id": file_id_column(F.col("path"), F.col("size_bytes"), F.col("modified_at")),
                "discovered_at": F.col("ingested_at"),
                "stored_path": F.col("path"),
            },
        )
        rows = spark.read.format("delta").load(table).select(
            "file_id", "path", "label", "size_bytes", "modified_at", "discovered_at",
            F.lit("migration").alias("discovered_by"), F.lit(False).alias("overwrites"),
        )
        adopted = rows if adopted is None else adopted.unionByName(rows)
    ensure_ledger(config.files_table)
    count = adopted.count()
    if count:
        adopted.write.format("delta").mode("append").save(config.files_table)
        log.info("adopted %d rows ingested before the file ledger (no file is featurized again)", count)
    return count
