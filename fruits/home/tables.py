"""The home's Delta tables: their schemas, and :class:`Table`, the one handle through which the code reads and writes
them, with delta-rs (``deltalake``, no JVM) or with Spark (delta-spark), given a session.

No other module imports ``deltalake`` or ``delta.tables`` or names the ``delta`` format (tests/test_tables.py checks
the sources): what changes on S3, where a table is opened, how a missing table or an old table's missing column is
handled, is answered here. A handle is cheap and made by the :class:`~fruits.home.home.Home` (``home.features``,
``home.table("files")``), with the home's storage options, passed to every delta-rs call (``DeltaTable(uri,
storage_options=...)``, as delta-rs' own API takes them) rather than read from the process's environment: two homes
on two S3 servers can live in one process.

Example::

    features = home.features                    # a Table handle (keep it to keep the table loaded)
    features.ensure()                           # made empty, with its schema, unless it is there
    features.append(rows)                       # one commit; rows: a pyarrow.Table of the table's schema
    features.read(["path", "label"])            # a pyarrow.Table (empty with the table's columns before any row)
    features.read(version=3)                    # time travel
    features.frame(spark).count()               # the same table as a Spark DataFrame

Appends from long-running processes (the stream's discovery and sink, ``fruits stage``, the web server) go through a
handle kept for the process: an append then writes its commit without reading the table's log again (a blind append
commits on top of whatever other writers committed since). deltalake's loaded table gets slower with every commit
written through it, though: its appends grow from milliseconds to a large part of a second after a few thousand
commits, while a table loaded afresh stays fast (``python bench/delta_rs_appends.py``). So the handle loads the table
again every :data:`RELOAD_EVERY` commits: the reload's cost, spread over them, is small.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping, Sequence
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, Field, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from pyspark.sql.pandas.types import to_arrow_schema
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

from fruits.errors import Stopped
from fruits.home.uris import local_path, rust_uri

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = [
    "CHANGE_FEED", "DeltaError", "FEATURES", "FEATURES_SCHEMA", "LEDGER", "LEDGER_SCHEMA", "PCA", "PCA_SCHEMA",
    "QUARANTINE", "QUARANTINE_SCHEMA", "RELOAD_EVERY", "SEALED_BY", "SPECS", "Table", "TableName", "TableSealed",
    "TableSpec",
]

log = logging.getLogger("fruits.home.tables")

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

TIMESTAMP = pa.timestamp("us", tz="UTC")
# The file ledger (fruits.home.ledger): one row per discovered file version.
LEDGER_SCHEMA = pa.schema(
    [
        pa.field("file_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("modified_at", TIMESTAMP, nullable=False),
        pa.field("discovered_at", TIMESTAMP, nullable=False),
        # "watch" (file event), "backfill" (listing), "drop", "stage", "upload", "migration" (ingested before the ledger)
        pa.field("discovered_by", pa.string(), nullable=False),
        # true: an earlier version of this path is in the ledger and was kept in landing (an overwrite in place)
        pa.field("overwrites", pa.bool_(), nullable=False),
        # Which try of this file version the row asks for: 0 when discovered, one more per retry ("retry" rows).
        pa.field("attempt", pa.int64()),
        # The lease of the process that recorded the row before making its file visible (drop, stage, upload): while
        # that writer heartbeats, a file not there yet is waited for (fruits.landing.writers).
        pa.field("writer", pa.string()),
        # Where the bytes are when not at ``path`` any more (a retry of a quarantined file reads them there).
        pa.field("read_from", pa.string()),
        # the path's exact bytes when ``path`` is not the exact name (not UTF-8: ``path`` spells each undecodable
        # byte as \xNN, fruits.home.names.spelled); null otherwise. file_id is made from these bytes.
        pa.field("raw_path", pa.binary()),
    ]
)

CHANGE_FEED = {"delta.enableChangeDataFeed": "true"}
# The table property that closes a features table to appends: the number of the model that replaces its model
# (fruits.batch.model_switch). Set by a metadata commit, which Delta's conflict check makes every append read an
# older version fail, so no append lands after it unseen.
SEALED_BY = "fruits.sealedBy"


class TableSealed(Stopped):
    """An append to a table another model replaces (:data:`SEALED_BY`); ``sealed_by`` is that model's number."""

    def __init__(self, message: str, *, sealed_by: int) -> None:
        super().__init__(message)
        self.sealed_by = sealed_by
TableName = Literal["features", "quarantine", "files", "pca"]


@dataclass(frozen=True)
class TableSpec:
    """What a table is: its name in the home (``tables/<name>``), its columns as Arrow types, the description in its
    Delta metadata, and whether Delta's change data feed is on (the PCA refit reads the features added since its last
    model from it)."""

    name: TableName
    schema: pa.Schema
    description: str
    change_feed: bool = False


FEATURES = TableSpec("features", to_arrow_schema(FEATURES_SCHEMA, timezone="UTC"),
                     "MobileNetV2 features of landed images", change_feed=True)
QUARANTINE = TableSpec("quarantine", to_arrow_schema(QUARANTINE_SCHEMA, timezone="UTC"),
                       "Landed files that could not be featurized")
LEDGER = TableSpec("files", LEDGER_SCHEMA, "Fruits! file ledger: one row per discovered file version")
PCA = TableSpec("pca", to_arrow_schema(PCA_SCHEMA, timezone="UTC"), "Feature rows projected on a PCA model version")
SPECS: dict[TableName, TableSpec] = {spec.name: spec for spec in (FEATURES, QUARANTINE, LEDGER, PCA)}

# Commits written through one loaded table before it is loaded again (delta-rs writes a checkpoint every 100 commits).
RELOAD_EVERY = 100
# Delta's OPTIMIZE settings (Spark): files smaller than minFileSize are rewritten, into files of at most maxFileSize.
OPTIMIZE_SIZE_SETTINGS = ("spark.databricks.delta.optimize.minFileSize", "spark.databricks.delta.optimize.maxFileSize")
# File systems only Hadoop's clients reach (delta-rs does not): their tables are made with Spark.
HADOOP_ONLY = re.compile(r"^(hdfs|viewfs|abfss?|gs|wasbs?)://")
# The columns delta-rs adds to the rows of the change data feed.
CHANGE_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


class Table:
    """One Delta table of a home: a location (as Spark/Hadoop spell it), its :class:`TableSpec`, and the storage
    options every delta-rs call gets (object_store's ``AWS_*`` keys for an ``s3a://`` home; none for a local one).

    Reads made with delta-rs see the table's columns plus those of its spec that a table made by an older version of
    the service lacks, as nulls; a table that is not there yet reads as no row (:meth:`read`) or None (:meth:`open`).
    Thread-safe; a handle kept by a long-running process keeps its table loaded between appends (see the module
    docstring).

    Example::

        ledger = Table("/data/fruits/tables/files", LEDGER)
        ledger.exists()                            # False on a new home
        ledger.append(rows, metadata={"k": "v"})   # made at the first append; the commit's commitInfo gets k
        ledger.version()                           # 1: the creation, then the append
    """

    def __init__(
        self,
        location: str,
        spec: TableSpec,
        *,
        storage_options: Mapping[str, str] | None = None,
        reload_every: int = RELOAD_EVERY,
    ) -> None:
        self.location = location
        self.spec = spec
        self.storage_options = dict(storage_options or {})
        self.reload_every = reload_every
        self._kept: DeltaTable | None = None
        self._commits = 0  # written through the kept table
        self._ensured = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Table({self.location!r}, {self.spec.name})"

    def __getstate__(self) -> dict[str, Any]:
        """What a pickled handle carries (the ledger source's reader is pickled to the tasks): where the table is,
        not the table it keeps loaded, nor its lock."""
        return {"location": self.location, "spec": self.spec, "storage_options": self.storage_options,
                "reload_every": self.reload_every}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"], state["spec"], storage_options=state["storage_options"],
                      reload_every=state["reload_every"])

    @property
    def uri(self) -> str:
        """The location as delta-rs spells it (``s3a://`` -> ``s3://``, ``file:/x`` -> ``/x``)."""
        return rust_uri(self.location)

    @property
    def name(self) -> TableName:
        return self.spec.name

    @property
    def schema(self) -> pa.Schema:
        return self.spec.schema

    def _options(self) -> dict[str, str] | None:
        return dict(self.storage_options) or None

    # --- delta-rs: opening, making ----------------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether a Delta table is at the location (its log has a commit)."""
        return DeltaTable.is_deltatable(self.uri, self._options())

    def open(self, version: int | None = None) -> DeltaTable | None:
        """The table loaded now (at ``version``, or its newest), or None if there is none yet."""
        try:
            return DeltaTable(self.uri, version=version, storage_options=self._options())
        except TableNotFoundError:
            return None

    def version(self) -> int | None:
        """The newest committed version, or None if there is no table yet."""
        table = self.open()
        return None if table is None else table.version()

    def ensure(self, spark: SparkSession | None = None) -> bool:
        """Make the table empty, with its spec's schema, description and properties, unless one is there; a table
        made by an older version of the service gets the columns it lacks (nullable: its rows read them as nulls).
        Safe when several processes race to make it. With delta-rs where it writes the location (local folders, S3:
        no Spark job), else with Spark (``spark``: HDFS and the other file systems only Hadoop reaches). Returns
        whether the table was made now."""
        if HADOOP_ONLY.match(self.location):
            if spark is None:
                raise ValueError(f"{self.location}: only Spark writes this file system; ensure() needs a session")
            return self._ensure_with_spark(spark)
        made, _ = self._ensure_rs()
        return made

    def _ensure_rs(self) -> tuple[bool, DeltaTable]:
        """(made now, the loaded table): :meth:`ensure` with delta-rs."""
        table, made = self.open(), False
        if table is None:
            try:
                table = DeltaTable.create(
                    self.uri, self.schema, mode="ignore", name=self.name, description=self.spec.description,
                    configuration=CHANGE_FEED if self.spec.change_feed else None, storage_options=self._options(),
                )
                made = True
            except DeltaError:  # another process made it between our look and our commit
                table = self.open()
                if table is None:
                    raise
        present = {field.name for field in table.schema().fields}
        missing = [field.with_nullable(True) for field in self.schema if field.name not in present]
        if missing:  # a table made by an older version of the service: add the new (nullable) columns
            table.alter.add_columns([Field.from_arrow(field) for field in missing])
            log.info("%s: added the columns %s", self.name, ", ".join(field.name for field in missing))
        return made, table

    def _ensure_with_spark(self, spark: SparkSession) -> bool:
        from delta.tables import DeltaTable as SparkDeltaTable
        from pyspark.sql.pandas.types import from_arrow_schema

        schema = from_arrow_schema(self.schema)
        made = not SparkDeltaTable.isDeltaTable(spark, self.location)
        builder = SparkDeltaTable.createIfNotExists(spark).location(self.location).addColumns(schema)
        builder = builder.comment(self.spec.description)
        for key, value in (CHANGE_FEED if self.spec.change_feed else {}).items():
            builder = builder.property(key, value)
        builder.execute()
        present = set(SparkDeltaTable.forPath(spark, self.location).toDF().columns)
        missing = [f for f in schema.fields if f.name not in present]
        if missing:  # a table made by an older version of the service: add the new (nullable) columns
            columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
            spark.sql(f"ALTER TABLE delta.`{self.location}` ADD COLUMNS ({columns})")
        return made

    # --- delta-rs: the table kept loaded, appends -------------------------------------------------------------------

    def kept(self, *, create: bool = True) -> DeltaTable | None:
        """The table this handle keeps loaded for its appends: loaded the first time (made first when ``create``,
        and brought to the spec's columns), and again every :attr:`reload_every` commits written through it. None
        if there is no table and ``create`` is false."""
        with self._lock:
            if self._kept is None or self._commits >= self.reload_every:
                if create and not self._ensured:
                    _, table = self._ensure_rs()
                    self._ensured = True
                else:
                    table = self.open()
                if table is None:
                    return None
                self._kept, self._commits = table, 0
            return self._kept

    def latest(self, *, create: bool = False) -> DeltaTable | None:
        """The kept table (:meth:`kept`) brought up to date: only the log entries added since it was last read are
        read (other processes' commits too). None if there is no table and ``create`` is false."""
        with self._lock:
            table = self.kept(create=create)
            if table is not None:
                table.update_incremental()
            return table

    def forget(self) -> None:
        """Drop the kept table (the next use loads it again): after an error that may have left it inconsistent."""
        with self._lock:
            self._kept = None

    def append(self, rows: pa.Table, *, metadata: Mapping[str, str] | None = None) -> None:
        """Append ``rows`` (the table's columns) in one commit, nothing if there are none; ``metadata``: custom
        commitInfo entries of the commit. The table is made at the first append if it is not there."""
        if rows.num_rows == 0:
            return
        properties = CommitProperties(custom_metadata=dict(metadata)) if metadata else None
        with self._lock:
            table = self.kept()
            self._refuse_if_sealed(table)
            try:
                write_deltalake(table, rows, mode="append", commit_properties=properties)
            except CommitFailedError:  # a commit it did not read changed the table's metadata: sealed?
                self.forget()
                self._refuse_if_sealed(self.kept())
                raise
            self._commits += 1

    def sealed_by(self, table: DeltaTable | None = None) -> int | None:
        """The model that replaces this table's (:data:`SEALED_BY`), as of ``table`` (default: the table now)."""
        table = table or self.open()
        value = table.metadata().configuration.get(SEALED_BY) if table is not None else None
        return int(value) if value else None

    def seal(self, model: int) -> int:
        """Close the table to appends, for the model ``model`` that replaces its own; returns the version of the
        seal. Appends that read an older version fail (Delta's conflict check), later ones see the seal."""
        table = self._require()
        if self.sealed_by(table) != model:
            table.alter.set_table_properties({SEALED_BY: str(model)}, raise_if_not_exists=False)
            table.update_incremental()
        return table.version()

    def unseal(self) -> None:
        """Open the table to appends again (a switch that stopped before making its model active gives it back)."""
        table = self._require()
        if self.sealed_by(table) is not None:
            table.alter.set_table_properties({SEALED_BY: ""}, raise_if_not_exists=False)

    def _refuse_if_sealed(self, table: DeltaTable) -> None:
        sealer = self.sealed_by(table)
        if sealer is not None:
            raise TableSealed(f"{self.location} is sealed: model {sealer} replaces its model", sealed_by=sealer)

    def overwrite(
        self, rows: pa.Table, *, predicate: str | None = None, schema_mode: Literal["overwrite", "merge"] | None = None,
    ) -> None:
        """Replace the table's rows with ``rows`` in one commit (made if missing); with ``predicate`` (SQL, e.g.
        ``"source_version > 3"``), only the rows that match it (Delta's ``replaceWhere``). Earlier versions stay
        readable by time travel."""
        with self._lock:
            write_deltalake(self.uri, rows, mode="overwrite", predicate=predicate, schema_mode=schema_mode,
                            storage_options=self._options())
            self._kept = None  # not written through the kept table: load it again

    def compact(self, *, target_size: int) -> tuple[int, int]:
        """delta-rs's bin-packing ``optimize.compact`` into files of at most ``target_size`` bytes (``dataChange``
        false, like Spark's ``OPTIMIZE``); (files removed, files added)."""
        metrics = self._require().optimize.compact(target_size=target_size)
        return int(metrics["numFilesRemoved"]), int(metrics["numFilesAdded"])

    def _require(self, version: int | None = None) -> DeltaTable:
        table = self.open(version)
        if table is None:
            raise FileNotFoundError(f"no Delta table at {self.location}")
        return table

    # --- delta-rs: reads --------------------------------------------------------------------------------------------

    def dataset(self, version: int | None = None, *, table: DeltaTable | None = None) -> ds.Dataset | None:
        """The rows (of ``version``, or of the newest; or of an already loaded ``table``) as a pyarrow dataset, with
        the spec's columns the table lacks as nulls; None if there is no table."""
        table = table if table is not None else self.open(version)
        if table is None:
            return None
        own = pa.schema(table.schema().to_arrow())
        missing = [field.with_nullable(True) for field in self.schema if field.name not in own.names]
        return table.to_pyarrow_dataset(schema=pa.schema([*own, *missing]) if missing else None)

    def read(
        self, columns: Sequence[str] | None = None, *, filter: ds.Expression | None = None, version: int | None = None,
    ) -> pa.Table:
        """The rows (``columns`` of them; those matching ``filter``) of ``version``, or of the newest; no row, with
        the spec's columns, if there is no table yet.

        Example: ``home.quarantine.read(["path", "reason"], filter=pc.field("retryable"))``"""
        dataset = self.dataset(version)
        if dataset is None:
            empty = self.schema.empty_table()
            return empty.select(list(columns)) if columns is not None else empty
        return dataset.to_table(columns=list(columns) if columns is not None else None, filter=filter)

    def add_actions(self, version: int | None = None, *, table: DeltaTable | None = None) -> pa.Table | None:
        """The data files of the snapshot (of ``version``, or the newest; or of an already loaded ``table``, e.g.
        :meth:`latest`) as the Delta log lists them, one row each with ``path``, ``size_bytes``, ``num_records`` and
        per-column statistics (``min.<column>``, ``max.<column>``, ``null_count.<column>``): no data file is read.
        None if there is no table. Raises :class:`OSError` naming the table if its log cannot be read."""
        try:
            table = table if table is not None else self.open(version)
        except DeltaError as exc:  # its message names no table
            raise OSError(f"cannot read the Delta log of {self.location}: {exc}") from exc
        return None if table is None else pa.table(table.get_add_actions(flatten=True))

    def read_files(
        self, files: Sequence[str], columns: Sequence[str] | None = None, *, schema: pa.Schema | None = None
    ) -> pa.Table:
        """The rows of some data files of the table (paths as its add actions spell them: :meth:`add_actions`), with
        ``schema`` (by default the spec's): columns a file lacks (written before they were added) read as nulls."""
        filesystem, located = self._files(files)
        dataset = ds.dataset(located, format="parquet", filesystem=filesystem, schema=schema or self.schema)
        return dataset.to_table(columns=list(columns) if columns is not None else None)

    def commits_gone(self, first: int, last: int) -> bool:
        """Whether the commits ``first .. last`` can no longer be read: a log entry of theirs expired (or never
        was), or a data file one of them added was vacuumed. Told by the table's files, as delta-rs raises no error
        type of its own for either."""
        filesystem, entries = self._files([f"_delta_log/{version:020d}.json" for version in range(first, last + 1)])
        if any(info.type != pafs.FileType.File for info in filesystem.get_file_info(entries)):
            return True
        added = []
        for entry in entries:
            with filesystem.open_input_stream(entry) as handle:
                actions = [json.loads(line) for line in handle.read().splitlines() if line.strip()]
            added += [unquote(action["add"]["path"]) for action in actions if "add" in action]
        _, located = self._files(added)
        return any(info.type == pafs.FileType.NotFound for info in filesystem.get_file_info(located))

    def _files(self, paths: Sequence[str]) -> tuple[pafs.FileSystem, list[str]]:
        """A pyarrow file system for the table's own files, and where ``paths`` (relative to the table's root, as its
        log spells them, or absolute) are on it: the local one, or the object store's client with this table's
        storage options (not the process's environment)."""
        root = self.uri.rstrip("/")
        if local_path(self.location) is not None:
            return pafs.LocalFileSystem(), [f if f.startswith("/") else f"{root}/{f}" for f in paths]
        from deltalake.fs import DeltaStorageHandler

        filesystem = pafs.PyFileSystem(DeltaStorageHandler(root, self._options()))
        return filesystem, [f[len(root) + 1 :] if f.startswith(root + "/") else f for f in paths]

    def changes(
        self, starting_version: int, ending_version: int | None = None, *, columns: Sequence[str] | None = None,
        table: DeltaTable | None = None,
    ) -> pa.RecordBatchReader:
        """The change data feed of versions ``starting_version`` to ``ending_version`` (both included; the newest
        by default): the rows each commit inserted, updated or deleted, with ``_change_type``, ``_commit_version``
        and ``_commit_timestamp`` (an append-only table needs no change data feed for its inserts). ``columns``:
        of the table's (those of the spec it lacks come as nulls), the change columns are always there. ``table``:
        an already loaded table to read it from."""
        table = table if table is not None else self._require()
        present = {field.name for field in table.schema().fields}
        wanted = list(columns) if columns is not None else [f.name for f in self.schema]
        read = None if columns is None else [*(c for c in wanted if c in present), *CHANGE_COLUMNS]
        reader = pa.RecordBatchReader.from_stream(
            table.load_cdf(starting_version=starting_version, ending_version=ending_version, columns=read)
        )
        absent = [self.schema.field(c).with_nullable(True) for c in wanted if c not in present and c in self.schema.names]
        if not absent:
            return reader
        schema = pa.schema([*reader.schema, *absent])

        def padded() -> Iterator[pa.RecordBatch]:
            for batch in reader:
                nulls = [pa.nulls(batch.num_rows, field.type) for field in absent]
                yield pa.RecordBatch.from_arrays([*batch.columns, *nulls], schema=schema)

        return pa.RecordBatchReader.from_batches(schema, padded())

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` commits' commitInfo (operation, metrics, custom metadata), newest first."""
        return self._require().history(limit)

    # --- Spark (delta-spark) ----------------------------------------------------------------------------------------

    def frame(self, spark: SparkSession, *, version: int | None = None) -> DataFrame:
        """The table (of ``version``, or its newest) as a Spark DataFrame, with the spec's columns it lacks as
        nulls."""
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return self._padded(reader.load(self.location))

    def change_frame(self, spark: SparkSession, *, starting_version: int, ending_version: int | None = None) -> DataFrame:
        """Delta's change data feed of versions ``starting_version`` to ``ending_version`` (both included; the newest
        by default) as a Spark DataFrame (``_change_type`` says insert, update or delete)."""
        reader = spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", starting_version)
        if ending_version is not None:
            reader = reader.option("endingVersion", ending_version)
        return self._padded(reader.load(self.location))

    def _padded(self, frame: DataFrame) -> DataFrame:
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_type

        missing = [field for field in self.schema if field.name not in frame.columns]
        for field in missing:
            frame = frame.withColumn(field.name, F.lit(None).cast(from_arrow_type(field.type)))
        return frame

    def write_frame(
        self, frame: DataFrame, *, mode: Literal["append", "overwrite"], replace_where: str | None = None,
        overwrite_schema: bool = False,
    ) -> None:
        """Write ``frame`` with Spark in one commit: appended, or replacing the table's rows (only those matching
        ``replace_where``, a SQL predicate, if given; ``overwrite_schema``: the table takes ``frame``'s schema)."""
        writer = frame.write.format("delta").mode(mode)
        if replace_where is not None:
            writer = writer.option("replaceWhere", replace_where)
        if overwrite_schema:
            writer = writer.option("overwriteSchema", "true")
        writer.save(self.location)
        with self._lock:
            self._kept = None

    def update(self, spark: SparkSession, *, where: Column, set: Mapping[str, Column]) -> None:
        """Delta's ``UPDATE``: the rows matching ``where`` get the columns of ``set`` (a Spark job)."""
        from delta.tables import DeltaTable as SparkDeltaTable

        SparkDeltaTable.forPath(spark, self.location).update(condition=where, set=dict(set))

    def optimize(self, spark: SparkSession, *, target_size: int) -> tuple[int, int]:
        """Delta's ``OPTIMIZE`` (bin-packing) with Spark into files of at most ``target_size`` bytes; (files
        removed, files added). The session's own size settings are restored after."""
        from delta.tables import DeltaTable as SparkDeltaTable

        table = SparkDeltaTable.forPath(spark, self.location)
        previous = {key: spark.conf.get(key, None) for key in OPTIMIZE_SIZE_SETTINGS}
        try:
            for key in OPTIMIZE_SIZE_SETTINGS:
                spark.conf.set(key, str(target_size))
            metrics = table.optimize().executeCompaction().head()["metrics"]
        finally:
            for key, value in previous.items():
                if value is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, value)
        return int(metrics["numFilesRemoved"]), int(metrics["numFilesAdded"])
