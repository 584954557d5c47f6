"""``fruits refit-pca``: Spark ML PCA over the features table at a pinned Delta version.

Each refit writes ``models/pca/vN/spark-model`` (a :class:`pyspark.ml.feature.PCAModel`), then the ``tables/pca``
rows of that version, then ``models/pca/vN/metadata.json`` last: a version without its metadata is an interrupted
refit and is redone. A refit is skipped when the features table has no version newer than the last model's source.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from pyspark.ml.feature import PCA, PCAModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from fruits import storage
from fruits.config import Config, join_uri
from fruits.tables import latest_version

log = logging.getLogger("fruits.refit")

METADATA = "metadata.json"


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


@dataclass(frozen=True)
class RefitOutcome:
    """A refit's result: the new version, or why none was made."""

    refitted: PcaVersion | None
    skipped_reason: str | None = None


def model_versions(spark: SparkSession, config: Config) -> list[PcaVersion]:
    """The completed model versions (those with their metadata), oldest first."""
    versions = []
    for name in storage.list_dir_names(spark, config.pca_models):
        metadata = join_uri(config.pca_models, f"{name}/{METADATA}")
        if re.fullmatch(r"v\d+", name) and storage.exists(spark, metadata):
            versions.append(PcaVersion(**json.loads(storage.read_text(spark, metadata))))
    return sorted(versions, key=lambda v: v.version)


def refit_pca(spark: SparkSession, config: Config, k: int) -> RefitOutcome:
    """Fit PCA(k) on the features table's current version; write the model, its metadata and ``tables/pca``."""
    if not storage.exists(spark, join_uri(config.features_table, "_delta_log")):
        return RefitOutcome(None, f"no features table at {config.features_table} yet")
    source_version = latest_version(spark, config.features_table)
    previous = model_versions(spark, config)
    if previous and previous[-1].source_version == source_version:
        return RefitOutcome(
            None, f"features table is still at version {source_version}, already fitted by v{previous[-1].version}"
        )
    features = (
        spark.read.format("delta").option("versionAsOf", source_version).load(config.features_table)
        .select("path", "label", "model_id", array_to_vector("features").alias("vector"))
        .persist()
    )
    try:
        rows = features.count()
        if rows == 0:
            return RefitOutcome(None, f"features table version {source_version} has no rows")
        model_ids = sorted(r["model_id"] for r in features.select("model_id").distinct().collect())
        if len(model_ids) > 1:
            log.warning("features of version %d come from several models: %s", source_version, model_ids)
        version = (previous[-1].version + 1) if previous else 1
        folder = join_uri(config.pca_models, f"v{version}")

        started = time.perf_counter()
        model: PCAModel = PCA(k=k, inputCol="vector", outputCol="pca_vector").fit(features)
        fit_seconds = time.perf_counter() - started
        model.write().overwrite().save(join_uri(folder, "spark-model"))

        (
            model.transform(features)
            .select(
                "path",
                "label",
                vector_to_array("pca_vector", "float32").alias("pca"),
                F.lit(version).cast("long").alias("pca_version"),
                F.lit(source_version).cast("long").alias("source_version"),
            )
            .write.format("delta")
            .mode("overwrite")
            .save(config.pca_table)
        )
        record = PcaVersion(
            version=version,
            k=k,
            explained_variance=[float(v) for v in model.explainedVariance.toArray()],
            rows=rows,
            source_version=source_version,
            fit_seconds=round(fit_seconds, 3),
            fitted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            model_path=join_uri(folder, "spark-model"),
            model_ids=model_ids,
        )
        storage.write_text(spark, join_uri(folder, METADATA), json.dumps(asdict(record), indent=2))
        return RefitOutcome(record)
    finally:
        features.unpersist()


def log_outcome(outcome: RefitOutcome) -> None:
    """One line about a refit: the new version's figures, or why it was skipped."""
    if outcome.refitted is None:
        log.info("refit skipped: %s", outcome.skipped_reason)
        return
    v = outcome.refitted
    log.info(
        "refit v%d: k=%d over %d rows of features version %d in %.1f s; explained variance %.3f (first %.3f)",
        v.version, v.k, v.rows, v.source_version, v.fit_seconds, sum(v.explained_variance), v.explained_variance[0],
    )


def refit_every(spark: SparkSession, config: Config, k: int, every_seconds: float, stop: threading.Event) -> None:
    """Refit now and then every ``every_seconds`` until ``stop`` is set; a refit with no new data is skipped and a
    failed one is logged and tried again at the next period."""
    while not stop.is_set():
        try:
            log_outcome(refit_pca(spark, config, k))
        except Exception:  # a failed refit (storage hiccup, concurrent vacuum, ...) is retried next period
            log.exception("refit failed; retrying in %.0f s", every_seconds)
        stop.wait(every_seconds)
