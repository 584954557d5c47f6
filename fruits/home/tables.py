"""The Delta tables' schemas, and creating them empty so readers find them before the first image arrives."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    FloatType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from fruits.home.uris import rust_uri

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Columns every outcome row (features or quarantine) carries from its ledger row (fruits.home.ledger), after the
# original columns (rows of homes older than the ledger have them null).
LEDGER_LINK = [
    StructField("file_id", StringType(), True),
    StructField("discovered_at", TimestampType(), True),
    # Where the file's bytes are now: HOME/archive/... once archived, HOME/quarantine/... once quarantined, the landing
    # path when kept, null when deleted (only ever after a features row).
    StructField("stored_path", StringType(), True),
    # Which try of the file version this outcome is (0 first; a retry adds one). A file version's current outcome is
    # the one of its highest attempt: a retry supersedes a quarantine row, which stays as history.
    StructField("attempt", LongType(), True),
]
# Columns only quarantine rows have: why, in one word (fruits.home.verdicts.Cause), and whether the stream tries the file
# again by itself (a transient cause, a writer that is still uploading, a file gone that may come back).
QUARANTINE_ONLY = [
    StructField("cause", StringType(), True),
    StructField("retryable", BooleanType(), True),
]


def _outcome_schema(result: StructField, content_known: bool, extra: list[StructField] = ()) -> StructType:
    """The columns of an outcome row: the file, when it was ingested, ``result`` (the features, or the quarantine
    reason), the model, and the link to its ledger row. ``content_known``: the bytes were always read."""
    return StructType(
        [
            StructField("path", StringType(), False),
            StructField("label", StringType(), True),
            StructField("content_sha256", StringType(), not content_known),
            StructField("size_bytes", LongType(), False),
            StructField("modified_at", TimestampType(), False),
            StructField("ingested_at", TimestampType(), False),
            result,
            StructField("model_id", StringType(), False),
            *LEDGER_LINK,
            *extra,
        ]
    )


FEATURES_SCHEMA = _outcome_schema(StructField("features", ArrayType(FloatType(), True), False), content_known=True)
QUARANTINE_SCHEMA = _outcome_schema(
    StructField("reason", StringType(), False), content_known=False, extra=QUARANTINE_ONLY
)

PCA_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("stored_path", StringType(), True),
        StructField("label", StringType(), True),
        StructField("pca", ArrayType(FloatType(), True), False),
        StructField("pca_version", LongType(), False),
        StructField("source_version", LongType(), False),
    ]
)


CHANGE_FEED = {"delta.enableChangeDataFeed": "true"}


def ensure_table(
    spark: SparkSession | None, location: str, schema: StructType, description: str, *, change_feed: bool = False
) -> bool:
    """Create an empty Delta table with ``schema`` at ``location`` unless one is already there; ``change_feed``
    turns on Delta's change data feed (the PCA refit reads the rows added since its last model from it).

    With delta-rs where it writes the location (local folders, S3: no Spark job, a stream's start-up costs less;
    the same schema, description and properties as Spark's ``createIfNotExists``), else with Spark (``spark``).
    Columns a table made by an older version of the service lacks are added (nullable). Returns whether the table
    was made now."""
    if re.match(r"^(hdfs|viewfs|abfss?|gs|wasbs?)://", location):  # file systems only Hadoop's clients reach
        return _ensure_with_spark(spark, location, schema, description, change_feed)
    from deltalake import DeltaTable, Field
    from deltalake.exceptions import TableNotFoundError
    from pyspark.sql.pandas.types import to_arrow_schema

    arrow = to_arrow_schema(schema, timezone="UTC")
    try:
        table = DeltaTable(rust_uri(location))
    except TableNotFoundError:
        DeltaTable.create(rust_uri(location), arrow, mode="ignore", description=description,
                          configuration=CHANGE_FEED if change_feed else None)
        return True
    present = {field.name for field in table.schema().fields}
    missing = [field.with_nullable(True) for field in arrow if field.name not in present]
    if missing:  # a table made by an older version of the service: add the new (nullable) columns
        table.alter.add_columns([Field.from_arrow(field) for field in missing])
    return False


def _ensure_with_spark(spark: SparkSession, location: str, schema: StructType, description: str, change_feed: bool) -> bool:
    from delta.tables import DeltaTable

    made = not DeltaTable.isDeltaTable(spark, location)
    builder = DeltaTable.createIfNotExists(spark).location(location).addColumns(schema).comment(description)
    if change_feed:
        builder = builder.property("delta.enableChangeDataFeed", "true")
    builder.execute()
    missing = [f for f in schema.fields if f.name not in DeltaTable.forPath(spark, location).toDF().columns]
    if missing:  # a table made by an older version of the service: add the new (nullable) columns
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE delta.`{location}` ADD COLUMNS ({columns})")
    return made


def latest_version(spark: SparkSession, location: str) -> int:
    """The newest committed version of the Delta table at ``location``."""
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, location).history(1).head()["version"])


def open_table(uri: str) -> DeltaTable | None:
    """The Delta table at ``uri``, or None if there is none yet."""
    try:
        return DeltaTable(rust_uri(uri))
    except TableNotFoundError:
        return None
