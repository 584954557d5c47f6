"""The home: every location of one Fruits! home, and how to reach them.

A :class:`Home` is built once from the configuration and handed to whatever reads or writes the home. It owns the
locations (landing folder, tables, model store, status, checkpoints, locks), and the storage options that reach them
(S3 endpoint, region, addressing), passed per call to the readers and writers rather than exported to the process
(delta-rs's ``DeltaTable(uri, storage_options=...)`` style), so two homes on two S3 servers can live in one process.

Example::

    home = Home.from_config(load_config())
    home.features_table          # '/data/fruits/tables/features' or 's3a://bucket/fruits/tables/features'
    home.storage_options         # {} for a local home; the S3 server's options for an s3a:// home
    home.files.read(home.stream_progress)   # the home's file system (fruits.home.filesystem)
    home.features.read(["path"]) # the features table, read with those options (fruits.home.tables.Table)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from fruits.config import Config, join_uri
from fruits.home import s3
from fruits.home.filesystem import Files, HadoopFiles, S3Files
from fruits.home.models import ModelRecord, ModelRegistry
from fruits.home.pca_store import PcaModelStore
from fruits.home.tables import SPECS, Table, TableName
from fruits.home.uris import local_path


@dataclass(frozen=True)
class Home:
    """One home's locations (Hadoop spelling: ``/x``, ``file:/x``, ``s3a://b/k``) and its storage options."""

    config: Config
    # The features table this Home stands for, fixed (:meth:`pinned`); None: the active model's, looked up each time.
    pinned_features: str | None = None
    # A Spark job's session (:meth:`with_spark`): reaches the home's files on stores only Hadoop knows (hdfs://).
    spark: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: Config) -> "Home":
        return cls(config)

    def pinned(self) -> "Home":
        """This home with its features table fixed to the active model's now: a job that reads it several times (a
        refit) reads one table even if a switch makes another model active meanwhile."""
        return replace(self, pinned_features=self.features_table)

    @property
    def needs_spark(self) -> bool:
        """Whether this home's files outside its tables are out of reach without a Spark session: an ``hdfs://``
        home, before :meth:`with_spark`."""
        return self.spark is None and self.s3 is None and local_path(self.root) is None

    def with_spark(self, spark) -> "Home":
        """This home for a Spark job: its files on a store that only Hadoop reaches (``hdfs://``) through ``spark``'s
        JVM; local and S3 homes are reached as without it."""
        return self if self.spark is spark else replace(self, spark=spark)

    @property
    def root(self) -> str:
        return self.config.home

    @property
    def landing(self) -> str:
        return self.config.landing

    @property
    def archive(self) -> str:
        return self.config.archive

    @property
    def quarantine_folder(self) -> str:
        """Where quarantined originals are moved (the quarantine *table* is :attr:`quarantine_table`)."""
        return self.config.quarantine

    @property
    def features_table(self) -> str:
        """The active model's features table (:attr:`models`); ``[paths] features_table`` before the first model."""
        if self.pinned_features is not None:
            return self.pinned_features
        active = self.models.load().active
        return active.table if active is not None else self.config.features_table

    @property
    def quarantine_table(self) -> str:
        return self.config.quarantine_table

    @property
    def ledger_table(self) -> str:
        """The file ledger: one row per discovered file version (:mod:`fruits.home.ledger`)."""
        return self.config.files_table

    @property
    def pca_table(self) -> str:
        return self.config.pca_table

    @property
    def pca_models(self) -> str:
        return self.config.pca_models

    @property
    def writers(self) -> str:
        return self.config.writers

    @property
    def locks(self) -> str:
        return self.config.locks

    @property
    def stream_progress(self) -> str:
        return self.config.stream_progress

    def checkpoint(self, name: str) -> str:
        return self.config.checkpoint(name)

    def status_file(self, name: str) -> str:
        return join_uri(self.config.location("status"), name)

    @cached_property
    def s3(self) -> s3.S3Settings | None:
        """The S3 server's settings when any location of this home is on S3, else None."""
        return s3.S3Settings.from_config(self.config) if s3.uses_s3(self.config) else None

    @property
    def storage_options(self) -> dict[str, str]:
        """Options for delta-rs, passed per call (object_store's ``AWS_*`` keys); empty for a home without S3."""
        return self.s3.storage_options() if self.s3 else {}

    @cached_property
    def files(self) -> Files:
        """The home's files outside its tables, for code without Spark: local paths through the OS, ``s3a://``
        through boto3 with :attr:`s3` (:mod:`fruits.home.filesystem`)."""
        if self.s3:
            return Files(remote=S3Files(self.s3))
        return Files(remote=HadoopFiles(self.spark) if self.spark is not None else None)

    def spark_files(self, spark) -> Files:
        """The home's files for a Spark job (the stream, the refit): local paths through the OS, any other location
        through Hadoop's FileSystem in ``spark``'s JVM, with the session's settings and credentials."""
        return Files(remote=HadoopFiles(spark))

    @cached_property
    def models(self) -> ModelRegistry:
        """The home's models: which one is active, and the others (:mod:`fruits.home.models`)."""
        return ModelRegistry(self.config.model_registry, self.files, features_table=self.config.features_table)

    @cached_property
    def pca_store(self) -> PcaModelStore:
        """The PCA model store (``models/pca/vN/``), read and written through :attr:`files`."""
        return PcaModelStore(self.pca_models, self.files)

    # --- the Delta tables (fruits.home.tables) ---------------------------------------------------------------------

    def table(self, name: TableName) -> Table:
        """A new handle on the table ``name`` ("features", "quarantine", "files": the ledger, "pca"), with this home's
        storage options. Handles are cheap; one kept by a long-running process keeps its table loaded between appends
        (:class:`~fruits.home.tables.Table`)."""
        location = {"features": lambda: self.features_table, "quarantine": lambda: self.quarantine_table,
                    "files": lambda: self.ledger_table, "pca": lambda: self.pca_table}[name]()
        return Table(location, SPECS[name], storage_options=self.storage_options)

    @property
    def features(self) -> Table:
        """A new handle on the active model's features table (one row per featurized file version)."""
        return self.table("features")

    def model_features(self, model: ModelRecord) -> Table:
        """A new handle on the features table of ``model`` (active or not)."""
        return Table(model.table, SPECS["features"], storage_options=self.storage_options)

    @property
    def quarantine(self) -> Table:
        """A new handle on the quarantine table (the originals are kept in :attr:`quarantine_folder`)."""
        return self.table("quarantine")

    @property
    def ledger(self) -> Table:
        """A new handle on the file ledger (``tables/files``)."""
        return self.table("files")

    @property
    def pca(self) -> Table:
        """A new handle on ``tables/pca`` (the features projected on a PCA model version)."""
        return self.table("pca")
