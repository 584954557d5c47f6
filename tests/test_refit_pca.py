"""refit-pca on the features the real stream wrote: Spark ML PCA, a versioned model, the pca table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fruits.home.home import Home

pytestmark = pytest.mark.slow


def test_refit_writes_a_versioned_model_and_one_pca_row_per_feature_row(spark, ingested):
    from pyspark.ml.feature import PCAModel

    from fruits.batch.refit_pca import refit_pca
    from fruits.home.pca_store import PcaModelStore

    config = ingested["config"]
    source_version = Home.from_config(config).features.version()
    outcome = refit_pca(spark, config, k=20)
    fitted = outcome.refitted
    assert fitted is not None and fitted.version == 1 and fitted.k == 20
    assert fitted.source_version == source_version
    assert fitted.rows == len(ingested["features"])
    variance = np.array(fitted.explained_variance)
    assert len(variance) == 20 and (np.diff(variance) <= 1e-12).all() and 0 < variance.sum() <= 1 + 1e-9

    folder = Path(config.pca_models) / "v1"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["k"] == 20 and metadata["source_version"] == source_version and metadata["fit_seconds"] > 0
    assert PCAModel.load(str(folder / "spark-model")).getK() == 20
    assert [v.version for v in PcaModelStore(config.pca_models).versions()] == [1]

    pca = spark.read.format("delta").load(config.pca_table).toPandas()
    assert sorted(pca["path"]) == sorted(ingested["features"]["path"])
    assert {len(v) for v in pca["pca"]} == {20}
    assert set(pca["pca_version"]) == {1} and set(pca["source_version"]) == {source_version}
    # Components come in order of explained variance: the projections' spread follows it.
    projected = np.stack(pca["pca"].to_numpy())
    assert projected[:, 0].var() > projected[:, -1].var()

    again = refit_pca(spark, config, k=20)
    assert again.refitted is None and "already fitted by v1" in again.skipped_reason


def test_refit_after_new_rows_makes_the_next_version(spark, weights, tmp_path):
    from fruits.batch.refit_pca import refit_pca
    from conftest import make_config, place, sample_files
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path)
    assert refit_pca(spark, config, k=3).skipped_reason.startswith("no features table")
    place(sample_files("Kiwi", 6), tmp_path / "landing" / "Kiwi")
    run_stream(spark, config, weights, available_now=True)
    assert refit_pca(spark, config, k=3).refitted.version == 1
    place(sample_files("Lemon", 6), tmp_path / "landing" / "Lemon")
    run_stream(spark, config, weights, available_now=True)
    second = refit_pca(spark, config, k=3).refitted
    assert second.version == 2 and second.rows == 12
    pca = spark.read.format("delta").load(config.pca_table)
    assert pca.count() == 12 and {r[0] for r in pca.select("pca_version").distinct().collect()} == {2}
    # The pca table's previous version still holds v1's rows (Delta time travel).
    assert spark.read.format("delta").option("versionAsOf", 0).load(config.pca_table).count() == 6


def test_refit_every_refits_then_skips_when_nothing_is_new(spark, ingested, caplog):
    import logging
    import threading
    import time

    from fruits.batch.schedule import refit_every

    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="fruits.refit")
    worker = threading.Thread(target=refit_every, args=(spark, ingested["config"], 20, None, 0.2, stop))
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while caplog.text.count("refit skipped") < 2 and time.monotonic() < deadline:
            stop.wait(0.2)
    finally:
        stop.set()
        worker.join(60)
    assert not worker.is_alive()
    assert caplog.text.count("refit skipped: features table is still at version") >= 2
    assert "refit v2" not in caplog.text
