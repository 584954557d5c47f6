"""The model store's file operations through Hadoop's file systems (the refit's side: same credentials and URIs as
Spark's own reads and writes); see :class:`fruits.home.pca_store.FileIO`."""

from __future__ import annotations

from pyspark.sql import SparkSession

from fruits.home import storage
from fruits.config import Config
from fruits.home.pca_store import PcaModelStore


class HadoopFiles:
    """:class:`fruits.home.pca_store.FileIO` over :mod:`fruits.home.storage` (driver-side Hadoop ``FileSystem`` calls)."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def list_dirs(self, uri: str) -> list[str]:
        return storage.list_dir_names(self.spark, uri)

    def read(self, uri: str) -> bytes | None:
        return storage.read_bytes(self.spark, uri) if storage.exists(self.spark, uri) else None

    def write(self, uri: str, data: bytes, *, atomic: bool = False) -> None:
        if atomic:  # the store writes only its (UTF-8 JSON) metadata atomically: a temporary file, then a rename
            storage.write_text(self.spark, uri, data.decode("utf-8"))
        else:
            storage.write_bytes(self.spark, uri, data)


def model_store(spark: SparkSession, config: Config) -> PcaModelStore:
    """The home's PCA model store, written through Hadoop."""
    return PcaModelStore(config.pca_models, HadoopFiles(spark))
