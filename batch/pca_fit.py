"""The fit of a refit: the statistics of the pinned features version (all rows, or the stored ones merged with the
rows added since), their exact eigendecomposition, and the Spark ML ``PCAModel`` made from it.

A **full** fit computes the statistics (n, mean, centred scatter; :mod:`fruits.batch.moments`) of every row in one
pass. An **incremental** fit reads only the rows added since the last model's source version (Delta change data
feed) and merges their statistics with the ones stored beside that model. It falls back to a full fit when rows
were deleted or updated, the new rows come from another model id, or the previous statistics are missing.

Both end the same way: the covariance's eigendecomposition on the driver (1280 x 1280, well under a second), which
is exact, so Spark ML's ``PCA.fit`` (a second pass over the rows for the same covariance, whose Java-LAPACK
fallback gets rank-deficient covariances wrong) is not run; the result is saved as a Spark ML ``PCAModel`` all
the same (``PCAModel.load`` and ``transform`` work on it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from typing import TYPE_CHECKING, Any

import numpy as np

from fruits.batch.moments import Moments, moments_of
from fruits.batch.spark_ml_format import INPUT_COL, OUTPUT_COL
from fruits.config import ConfigError
from fruits.home.pca_store import FitMethod, PcaModelStore, PcaVersion
from fruits.home.tables import Table

if TYPE_CHECKING:  # pyspark.ml is imported by the Spark path only: the local refit spares its import time
    from pyspark.ml.feature import PCAModel
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("fruits.refit")

@dataclass
class Fit:
    """The statistics of the pinned version and where they came from; ``rows`` is what ``tables/pca`` gets next:
    the new rows (incremental) or every row (full)."""

    moments: Moments
    model_ids: list[str]
    method: FitMethod
    new_rows: int
    rows: Any  # a Spark DataFrame, or fruits.batch.local_fit.ArrowRows
    fallback_reason: str | None = None
    cached: DataFrame | None = None  # the added rows, cached while the refit uses them

    def release(self) -> None:
        """Drop the cached rows (once the projection is written)."""
        if self.cached is not None:
            self.cached.unpersist()


def choose_k(explained: np.ndarray, k: int | None, variance: float | None) -> tuple[int, str]:
    """``k`` as given, or the smallest k whose cumulative explained variance reaches ``variance``."""
    if variance is not None:
        if not 0 < variance <= 1:
            raise ConfigError(f"--variance {variance}: must be in (0, 1]")
        reached = np.cumsum(explained) >= variance - 1e-12
        return int(np.argmax(reached)) + 1 if reached.any() else len(explained), f"variance>={variance}"
    return int(k), f"k={k}"


def pca_model(spark: SparkSession, components: np.ndarray, explained: np.ndarray) -> PCAModel:
    """A Spark ML :class:`PCAModel` from (d, k) components and k explained-variance ratios."""
    from pyspark.ml.common import _py2java
    from pyspark.ml.feature import PCAModel
    from pyspark.ml.linalg import DenseMatrix, DenseVector

    dim, k = components.shape
    java_model = spark.sparkContext._jvm.org.apache.spark.ml.feature.PCAModel(
        f"PCAModel_fruits_{int(time.time())}",
        _py2java(spark.sparkContext, DenseMatrix(dim, k, components.flatten(order="F").tolist())),
        _py2java(spark.sparkContext, DenseVector(explained.tolist())),
    )
    java_model.set(java_model.k(), k)
    model = PCAModel(java_model)
    model._transfer_params_from_java()
    return model.setInputCol(INPUT_COL).setOutputCol(OUTPUT_COL)


def rows_at(spark: SparkSession, features: Table, version: int) -> DataFrame:
    """The rows of features table version ``version`` (``stored_path`` null in tables older than the ledger)."""
    return _row_columns(features.frame(spark, version=version))


def _row_columns(frame: DataFrame, *extra: str) -> DataFrame:
    return frame.select("path", "stored_path", "label", "model_id", "features", *extra)


def _model_ids(frame: DataFrame) -> list[str]:
    return sorted(row["model_id"] for row in frame.select("model_id").distinct().collect())


def fit_full(spark: SparkSession, features: Table, source_version: int, why: str | None = None) -> Fit | None:
    """The statistics of every row of ``source_version`` (None if it has no row); ``why``: the fallback reason."""
    rows = rows_at(spark, features, source_version)
    model_ids = _model_ids(rows)
    if not model_ids:
        return None
    if len(model_ids) > 1:
        log.warning("features of version %d come from several models: %s", source_version, model_ids)
    moments = moments_of(rows)
    return Fit(moments, model_ids, "full", moments.n, rows, why)


def fit_incremental(
    spark: SparkSession, features: Table, store: PcaModelStore, last: PcaVersion, source_version: int
) -> Fit | str:
    """The stored statistics of ``last`` merged with those of the rows added since, or why that cannot be done."""
    stored = store.statistics(last.version)
    if stored is None:
        return f"v{last.version} has no stored statistics"
    cached = _inserts_since(spark, features, last.source_version, source_version)
    if isinstance(cached, str):
        return cached
    added = cached.drop("_change_type")
    new_ids = _model_ids(added)
    if not set(new_ids) <= set(last.model_ids):
        cached.unpersist()
        return f"model id changed ({last.model_ids} -> {sorted(set(last.model_ids) | set(new_ids))})"
    previous = Moments.from_bytes(stored)
    merged = previous.merge(moments_of(added)) if new_ids else previous  # no new row: the statistics stand
    return Fit(merged, list(last.model_ids), "incremental", merged.n - previous.n, added, cached=cached)


def _inserts_since(spark: SparkSession, features: Table, since: int, until: int) -> DataFrame | str:
    """The rows inserted in versions (since, until] of the features table (cached: the fit and the projection both
    read them), or why they cannot be used. An ``OPTIMIZE`` commit in the range has no change row: it is ignored."""
    from pyspark.sql import functions as F

    try:
        changes = features.change_frame(spark, starting_version=since + 1, ending_version=until)
        cached = _row_columns(changes, "_change_type").persist()
        if not cached.where(F.col("_change_type") != "insert").isEmpty():
            cached.unpersist()
            return f"rows were changed or deleted since version {since}"
    except Exception as exc:  # change data feed off for those versions, or log files cleaned up
        return f"change data feed unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    return cached


def fit_pca(
    spark: SparkSession, features: Table, store: PcaModelStore, last: PcaVersion | None, source_version: int,
    incremental: bool,
) -> Fit | None:
    """The incremental fit when ``incremental`` and possible, else the full one (None: no row to fit)."""
    why = None
    if incremental and last is not None:
        fit = fit_incremental(spark, features, store, last, source_version)
        if isinstance(fit, Fit):
            return fit
        why = fit
    return fit_full(spark, features, source_version, why)
