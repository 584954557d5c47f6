"""``fruits refit-pca``: PCA over the features table at a pinned Delta version, full or incremental.

A **full** refit fits Spark ML's PCA on every row of the pinned version. An **incremental** refit reads only the
rows added since the last model's source version (Delta change data feed), merges their sufficient statistics
(n, mean, centred scatter; :mod:`fruits.batch.moments`) with the ones stored beside that model, and eigendecomposes the
result: the same components as a full refit, without re-reading old rows. It falls back to a full refit when rows
were deleted or updated, the model id of the features changed, or the previous statistics are missing.

Before it pins the features version, a refit compacts the features and quarantine tables when they hold enough
small files (Delta ``OPTIMIZE``, :mod:`fruits.batch.compaction`; ``[compaction]`` in conf/fruits.toml, ``--no-compact``).

Each refit writes, under ``models/pca/vN/``: ``spark-model`` (a :class:`pyspark.ml.feature.PCAModel`),
``components.npy`` (the same (d, k) matrix, for readers without Spark), ``moments.npz``, ``explained-variance.png``, ``pc1-pc2.png``; then the ``tables/pca`` rows of that version; then
``metadata.json`` last: a version without its metadata is an interrupted refit and is redone. A refit is skipped
when the features table has no version newer than the last model's source.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
from pyspark.ml.common import _py2java
from pyspark.ml.feature import PCA, PCAModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseMatrix, DenseVector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fruits.batch.compaction import compact_tables, describe
from fruits.batch.moments import Moments, moments_of
from fruits import storage
from fruits.config import Config, join_uri
from fruits.tables import latest_version

log = logging.getLogger("fruits.refit")

METADATA = "metadata.json"
MOMENTS = "moments.npz"
COMPONENTS = "components.npy"
SCATTER_SAMPLE = 3000


@dataclass(frozen=True)
class PcaVersion:
    """What ``models/pca/vN/metadata.json`` records about one refit."""

    version: int
    k: int
    explained_variance: list[float]
    rows: int
    source_version: int
    fit_seconds: float
    fitted_at: str
    model_path: str
    model_ids: list[str]
    method: str = "full"  # "full" or "incremental"
    k_rule: str = ""
    new_rows: int = 0
    fallback_reason: str | None = None
    plots: list[str] = field(default_factory=list)
    # Per table (features, quarantine): compacted with files before/after, or skipped and why, or the error.
    compaction: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RefitOutcome:
    """A refit's result: the new version, or why none was made."""

    refitted: PcaVersion | None
    skipped_reason: str | None = None
    compaction: dict = field(default_factory=dict)


def model_versions(spark: SparkSession, config: Config) -> list[PcaVersion]:
    """The completed model versions (those with their metadata), oldest first."""
    versions = []
    for name in storage.list_dir_names(spark, config.pca_models):
        metadata = join_uri(config.pca_models, f"{name}/{METADATA}")
        if re.fullmatch(r"v\d+", name) and storage.exists(spark, metadata):
            versions.append(PcaVersion(**json.loads(storage.read_text(spark, metadata))))
    return sorted(versions, key=lambda v: v.version)


def choose_k(explained: np.ndarray, k: int | None, variance: float | None) -> tuple[int, str]:
    """``k`` as given, or the smallest k whose cumulative explained variance reaches ``variance``."""
    if variance is not None:
        if not 0 < variance <= 1:
            raise ValueError(f"--variance {variance}: must be in (0, 1]")
        reached = np.cumsum(explained) >= variance - 1e-12
        return int(np.argmax(reached)) + 1 if reached.any() else len(explained), f"variance>={variance}"
    return int(k), f"k={k}"


def pca_model(spark: SparkSession, components: np.ndarray, explained: np.ndarray) -> PCAModel:
    """A Spark ML :class:`PCAModel` from (d, k) components and k explained-variance ratios."""
    dim, k = components.shape
    java_model = spark.sparkContext._jvm.org.apache.spark.ml.feature.PCAModel(
        f"PCAModel_incremental_{int(time.time())}",
        _py2java(spark.sparkContext, DenseMatrix(dim, k, components.flatten(order="F").tolist())),
        _py2java(spark.sparkContext, DenseVector(explained.tolist())),
    )
    java_model.set(java_model.k(), k)
    model = PCAModel(java_model)
    model._transfer_params_from_java()
    return model


def _changes_since(spark: SparkSession, config: Config, since: int, until: int) -> tuple[DataFrame | None, str | None]:
    """Rows inserted in versions (since, until] of the features table, or None and why they cannot be used."""
    try:
        changes = (
            spark.read.format("delta")
            .option("readChangeFeed", "true")
            .option("startingVersion", since + 1)
            .option("endingVersion", until)
            .load(config.features_table)
        )
        if not changes.where(F.col("_change_type") != "insert").isEmpty():
            return None, f"rows were changed or deleted since version {since}"
    except Exception as exc:  # change data feed off for those versions, or log files cleaned up
        return None, f"change data feed unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    return changes.drop("_change_type", "_commit_version", "_commit_timestamp"), None


def refit_pca(
    spark: SparkSession, config: Config, k: int | None = 20, variance: float | None = None, incremental: bool = True
) -> RefitOutcome:
    """Fit PCA on the features table's current version; write the model, its statistics, plots, ``tables/pca``."""
    if not storage.exists(spark, join_uri(config.features_table, "_delta_log")):
        return RefitOutcome(None, f"no features table at {config.features_table} yet")
    source_version = latest_version(spark, config.features_table)
    previous = model_versions(spark, config)
    last = previous[-1] if previous else None
    if last and last.source_version == source_version:
        return RefitOutcome(None, f"features table is still at version {source_version}, already fitted by v{last.version}")
    # Compact before the version is pinned, not after the fit:
    # - the fit and the projection below then scan the compacted files of the pinned version, not the small ones;
    # - OPTIMIZE commits a new version (dataChange=false). Made after the fit, that commit would be newer than the
    #   model's source version, so the next refit would find "new" data and make a version with no new row.
    #   Made here, it is part of the pinned version. An OPTIMIZE commit inside a later refit's range
    #   (source_version, latest] has no change-data-feed row, so the incremental path ignores it and does not fall
    #   back to a full refit (tests/test_compaction.py checks both).
    # - The stream may keep appending meanwhile: its blind appends do not conflict with OPTIMIZE, and whatever it
    #   commits before the pin below is fitted now, after it at the next refit.
    compaction = compact_tables(spark, config)
    source_version = latest_version(spark, config.features_table)
    table = spark.read.format("delta").option("versionAsOf", source_version).load(config.features_table)
    # where each photo is now (archived after ingestion): identify shows it; null in tables older than the ledger
    stored = F.col("stored_path") if "stored_path" in table.columns else F.lit(None).cast("string")
    features = table.select("path", stored.alias("stored_path"), "label", "model_id", "features").persist()
    try:
        rows = features.count()
        if rows == 0:
            return RefitOutcome(None, f"features table version {source_version} has no rows", compaction)
        model_ids = sorted(r["model_id"] for r in features.select("model_id").distinct().collect())
        if len(model_ids) > 1:
            log.warning("features of version %d come from several models: %s", source_version, model_ids)
        version = (last.version + 1) if last else 1
        folder = join_uri(config.pca_models, f"v{version}")

        started = time.perf_counter()
        new_rows, moments, fallback = rows, None, None
        if incremental and last is not None:
            moments, new_rows, fallback = _incremental_moments(spark, config, last, model_ids, source_version)
        method = "incremental" if moments is not None else "full"
        if moments is None:
            moments = moments_of(features)
        components, ratios = moments.principal_components()
        chosen, rule = choose_k(ratios, k, variance)
        if method == "incremental":
            model = pca_model(spark, components[:, :chosen], ratios[:chosen])
        else:
            vectors = features.select(array_to_vector("features").alias("vector"))
            model = PCA(k=chosen, inputCol="vector", outputCol="pca_vector").fit(vectors)
            model, check = _checked(spark, model, components[:, :chosen], ratios[:chosen])
            fallback = fallback or check
        fit_seconds = time.perf_counter() - started
        model.setInputCol("vector").setOutputCol("pca_vector")
        model.write().overwrite().save(join_uri(folder, "spark-model"))
        storage.write_bytes(spark, join_uri(folder, MOMENTS), moments.to_bytes())
        # The components again as a plain .npy, for readers without Spark (fruits identify).
        storage.write_bytes(spark, join_uri(folder, COMPONENTS), _npy(model.pc.toArray()))

        projected = model.transform(features.withColumn("vector", array_to_vector("features"))).select(
            "path",
            "stored_path",
            "label",
            vector_to_array("pca_vector", "float32").alias("pca"),
            F.lit(version).cast("long").alias("pca_version"),
            F.lit(source_version).cast("long").alias("source_version"),
        )
        projected.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(config.pca_table)
        explained = [float(v) for v in model.explainedVariance.toArray()]
        plots = write_plots(spark, folder, ratios, explained, projected)
        record = PcaVersion(
            version=version,
            k=chosen,
            explained_variance=explained,
            rows=rows,
            source_version=source_version,
            fit_seconds=round(fit_seconds, 3),
            fitted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            model_path=join_uri(folder, "spark-model"),
            model_ids=model_ids,
            method=method,
            k_rule=rule,
            new_rows=new_rows,
            fallback_reason=fallback,
            plots=plots,
            compaction=compaction,
        )
        storage.write_text(spark, join_uri(folder, METADATA), json.dumps(asdict(record), indent=2))
        return RefitOutcome(record, compaction=compaction)
    finally:
        features.unpersist()


def _checked(
    spark: SparkSession, model: PCAModel, components: np.ndarray, ratios: np.ndarray
) -> tuple[PCAModel, str | None]:
    """Spark ML's PCA checked against the exact eigendecomposition (``components``, ``ratios``) of the same rows.

    Without a native LAPACK, Spark falls back to a Java one whose SVD of a rank-deficient covariance (fewer rows
    than 1280 dimensions) returns wrong components past the first few; then the exact ones are used instead.
    """
    if np.abs(model.explainedVariance.toArray() - ratios).max() <= 1e-6:
        return model, None
    log.warning("Spark ML PCA disagrees with the exact eigendecomposition (is a native LAPACK installed?); using the exact one")
    return pca_model(spark, components, ratios), "Spark ML PCA disagreed with the exact eigendecomposition"


def _incremental_moments(
    spark: SparkSession, config: Config, last: PcaVersion, model_ids: list[str], source_version: int
) -> tuple[Moments | None, int, str | None]:
    """(merged statistics, rows added, None), or (None, 0, why a full refit is needed instead)."""
    if last.model_ids != model_ids:
        return None, 0, f"model id changed ({last.model_ids} -> {model_ids})"
    stored = join_uri(config.pca_models, f"v{last.version}/{MOMENTS}")
    if not storage.exists(spark, stored):
        return None, 0, f"v{last.version} has no stored statistics"
    added, why = _changes_since(spark, config, last.source_version, source_version)
    if added is None:
        return None, 0, why
    previous = Moments.from_bytes(storage.read_bytes(spark, stored))
    try:
        merged = previous.merge(moments_of(added))
    except ValueError:  # no rows added (e.g. only empty commits): the statistics stand as they are
        merged = previous
    return merged, merged.n - previous.n, None


def write_plots(spark: SparkSession, folder: str, ratios: np.ndarray, explained: list[float], projected: DataFrame) -> list[str]:
    """The cumulative explained-variance curve and a PC1/PC2 scatter coloured by label, as PNGs next to the model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    figure, axis = plt.subplots(figsize=(6, 4), dpi=110)
    shown = min(len(ratios), max(100, 2 * len(explained)))
    axis.plot(np.arange(1, shown + 1), np.cumsum(ratios[:shown]), label="all components")
    axis.plot(np.arange(1, len(explained) + 1), np.cumsum(explained), "o", markersize=3, label=f"kept (k={len(explained)})")
    axis.set(xlabel="components", ylabel="cumulative explained variance", ylim=(0, 1.01), title="PCA explained variance")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    names.append(_save(spark, figure, folder, "explained-variance.png"))

    total = projected.count()
    sample = projected.sample(fraction=min(1.0, SCATTER_SAMPLE / max(total, 1)), seed=7) if total > SCATTER_SAMPLE else projected
    points = sample.select("label", "pca").toPandas()
    figure, axis = plt.subplots(figsize=(7, 6), dpi=110)
    labels = sorted(points["label"].fillna("(none)").unique())
    colours = plt.get_cmap("tab20")
    for index, label in enumerate(labels):
        mine = points[points["label"].fillna("(none)") == label]
        xy = np.stack(mine["pca"].to_numpy())
        axis.scatter(xy[:, 0], xy[:, 1] if xy.shape[1] > 1 else np.zeros(len(xy)), s=6, color=colours(index % 20), label=label)
    axis.set(xlabel="PC1", ylabel="PC2", title=f"PC1 vs PC2, {len(points)} of {total} rows, {len(labels)} labels")
    if len(labels) <= 20:
        axis.legend(fontsize=6, markerscale=2, loc="best")
    names.append(_save(spark, figure, folder, "pc1-pc2.png"))
    return names


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _save(spark: SparkSession, figure, folder: str, name: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    storage.write_bytes(spark, join_uri(folder, name), buffer.getvalue())
    return name


def log_outcome(outcome: RefitOutcome) -> None:
    """One line about a refit: the new version's figures, or why it was skipped."""
    compaction = f"; compaction: {describe(outcome.compaction)}" if outcome.compaction else ""
    if outcome.refitted is None:
        log.info("refit skipped: %s%s", outcome.skipped_reason, compaction)
        return
    v = outcome.refitted
    log.info(
        "refit v%d (%s%s): k=%d over %d rows of features version %d (%d new) in %.1f s; explained variance %.3f (first %.3f)%s",
        v.version, v.method, f", full because {v.fallback_reason}" if v.fallback_reason else "", v.k, v.rows,
        v.source_version, v.new_rows, v.fit_seconds, sum(v.explained_variance), v.explained_variance[0], compaction,
    )


class RefitKeepsFailing(RuntimeError):
    """``refit_every`` gave up after too many failed refits in a row."""


def refit_every(
    spark: SparkSession,
    config: Config,
    k: int | None,
    variance: float | None,
    every_seconds: float,
    stop: threading.Event,
    max_consecutive_failures: int = 3,
) -> None:
    """Refit now and then every ``every_seconds`` until ``stop`` is set; a refit with no new data is skipped and a
    failed one is logged and tried again at the next period. After ``max_consecutive_failures`` failed refits in a
    row, raises :class:`RefitKeepsFailing` (a failure that lasts is not fixed by waiting: let the orchestrator
    restart the process and alert)."""
    failures = 0
    while not stop.is_set():
        try:
            log_outcome(refit_pca(spark, config, k, variance))
            failures = 0
        except Exception as exc:  # a failed refit (storage hiccup, concurrent vacuum, ...) is retried next period
            failures += 1
            if failures >= max_consecutive_failures:
                raise RefitKeepsFailing(
                    f"{failures} refits failed in a row, the last with {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:300] if str(exc) else 'no detail'}"
                ) from exc
            log.exception("refit failed (%d of %d in a row); retrying in %.0f s", failures, max_consecutive_failures, every_seconds)
        stop.wait(every_seconds)
