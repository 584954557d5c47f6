"""The refit without a JVM (fruits/batch/local_fit.py): the same statistics, model store and tables/pca as the Spark
path on the same rows, full and incremental, with compaction by delta-rs; a Spark ML model that the real Spark's
``PCAModel.load`` reads; `fruits refit-pca` on a small home starts no JVM; the engine rule of [pca]."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import NOTOP_WEIGHTS, assert_same_pca, make_config
from fruits.home.home import Home

FRUITS = str(Path(sys.executable).with_name("fruits"))


def _statistics(config, version):
    from fruits.batch.moments import Moments
    from fruits.home.pca_store import PcaModelStore

    return Moments.from_bytes(PcaModelStore(config.pca_models).statistics(version))


def _pca_rows(config):
    from deltalake import DeltaTable

    table = DeltaTable(config.pca_table).to_pandas().sort_values("path").reset_index(drop=True)
    return table, np.stack(table["pca"].to_numpy()).astype(np.float64)


def _assert_same_refit(spark, local, reference, local_config, reference_config):
    """Two versions of the same rows: statistics, model (loaded by Spark), components and tables/pca agree."""
    from pyspark.ml.feature import PCAModel
    from pyspark.ml.linalg import Vectors

    from fruits.home.pca_store import PcaModelStore

    assert (local.engine, reference.engine) == ("local", "spark")
    assert (local.method, local.rows, local.new_rows, local.k) == (reference.method, reference.rows, reference.new_rows, reference.k)
    mine, theirs = _statistics(local_config, local.version), _statistics(reference_config, reference.version)
    assert mine.n == theirs.n
    assert np.allclose(mine.mean, theirs.mean, rtol=1e-9, atol=1e-12)
    assert np.allclose(mine.scatter, theirs.scatter, rtol=1e-7, atol=1e-9 * np.abs(theirs.scatter).max())
    assert_same_pca(local, reference)  # PCAModel.load of both, components up to sign, explained variance

    model = PCAModel.load(local.model_path)
    components = PcaModelStore(local_config.pca_models).components(local.version)
    assert model.getK() == local.k and model.getInputCol() == "vector" and model.getOutputCol() == "pca_vector"
    assert np.array_equal(model.pc.toArray(), components)
    assert np.allclose(model.explainedVariance.toArray(), local.explained_variance, rtol=0, atol=1e-15)

    table, points = _pca_rows(local_config)
    other, other_points = _pca_rows(reference_config)
    assert list(table["path"]) == list(other["path"]) and list(table["label"]) == list(other["label"])
    assert set(table["pca_version"]) == set(other["pca_version"])
    reference_components = PcaModelStore(reference_config.pca_models).components(reference.coordinates_version)
    signs = np.sign(np.sum(PcaModelStore(local_config.pca_models).components(local.coordinates_version) * reference_components, axis=0))
    assert np.abs(points - other_points * signs).max() <= 1e-4 * np.abs(other_points).max()
    # The model Spark loads transforms a row to the table's value (PCAModel.transform: x . components, no centring).
    features = spark.read.format("delta").load(local_config.features_table).where(f"path = '{table['path'][0]}'").head()
    frame = spark.createDataFrame([(Vectors.dense([float(v) for v in features["features"]]),)], ["vector"])
    if local.coordinates_version == local.version:
        transformed = model.transform(frame).head()["pca_vector"].toArray()
        assert np.allclose(transformed, points[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_local_refit_writes_what_the_spark_refit_writes_full_then_incremental(spark, features_home, tmp_path):
    from deltalake import DeltaTable

    from fruits.batch.refit_pca import refit_pca, refit_pca_local

    config, rows, append = features_home  # 250 real feature rows, change data feed on, 2 small files
    reference = make_config(tmp_path, paths={"features_table": config.features_table, "pca_models": str(tmp_path / "spark-models"),
                                             "pca_table": str(tmp_path / "spark-pca")}, compaction={"enabled": False})
    local = make_config(tmp_path, paths={"features_table": config.features_table, "pca_models": str(tmp_path / "local-models"),
                                         "pca_table": str(tmp_path / "local-pca")}, compaction={"min_extra_files": 1})

    spark_v1 = refit_pca(spark, reference, k=10).refitted
    files_before = len(DeltaTable(config.features_table).file_uris())
    outcome = refit_pca_local(local, k=10)
    local_v1 = outcome.refitted
    # delta-rs compacted the features table before the fit, as OPTIMIZE would (dataChange=false: no new rows).
    assert outcome.compaction["features"]["compacted"] and files_before >= 2
    assert len(DeltaTable(config.features_table).file_uris()) == 1
    assert DeltaTable(config.features_table).history(1)[0]["operation"] == "OPTIMIZE"
    assert local_v1.source_version == spark_v1.source_version + 1
    _assert_same_refit(spark, local_v1, spark_v1, local, reference)

    # Incremental: both read only the rows added since (change data feed; the delta-rs OPTIMIZE commit adds none).
    append(rows.iloc[250:])
    spark_v2 = refit_pca(spark, reference, k=10).refitted
    local_v2 = refit_pca_local(local, k=10).refitted
    assert local_v2.method == "incremental" and local_v2.new_rows == len(rows) - 250 and local_v2.rows == len(rows)
    assert local_v2.fallback_reason is None and spark_v2.fallback_reason is None
    _assert_same_refit(spark, local_v2, spark_v2, local, reference)

    # Deleted rows: the local path falls back to a full fit, as the Spark path does.
    spark.sql(f"DELETE FROM delta.`{config.features_table}` WHERE label = 'Banana'")
    local_v3 = refit_pca_local(local, k=10).refitted
    assert local_v3.method == "full" and "changed or deleted" in local_v3.fallback_reason
    assert local_v3.rows == int((rows["label"] != "Banana").sum())


@pytest.mark.slow
def test_fruits_refit_pca_on_a_small_home_starts_no_jvm(features_home, tmp_path):
    config, _, _ = features_home
    home = Path(config.home)
    # A tripwire Java first on the way: Spark's launcher (JAVA_HOME/bin/java, else java on PATH) would run it.
    jdk = tmp_path / "tripwire-jdk" / "bin"
    jdk.mkdir(parents=True)
    (jdk / "java").write_text(f"#!/bin/sh\ntouch {tmp_path / 'java-started'}\nexit 1\n")
    (jdk / "java").chmod(0o755)
    env = {**os.environ, "JAVA_HOME": str(jdk.parent), "PATH": f"{jdk}:{os.environ['PATH']}", "FRUITS_WEIGHTS": str(NOTOP_WEIGHTS)}
    # The tripwire works: the same command on Spark trips it (and fails, writing no version).
    spark_run = subprocess.run([FRUITS, "refit-pca", "--home", str(home), "--k", "20", "--engine", "spark"],
                               capture_output=True, text=True, timeout=300, env=env)
    assert spark_run.returncode != 0 and (tmp_path / "java-started").exists()
    (tmp_path / "java-started").unlink()
    done = subprocess.run([FRUITS, "refit-pca", "--home", str(home), "--k", "20"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "java-started").exists()
    assert "refit on this process (delta-rs + numpy, no JVM)" in done.stderr
    record = json.loads((home / "models" / "pca" / "v1" / "metadata.json").read_text())
    assert record["engine"] == "local" and record["k"] == 20 and record["rows"] == 250
    assert (home / "models" / "pca" / "v1" / "spark-model" / "metadata" / "part-00000").is_file()


def _synthetic_features(location: str, rows: int, start: int = 0) -> None:
    """A features table (delta-rs, the stream's schema) of ``rows`` rows of 4 floats, or ``rows`` more from ``start``:
    for the engine rule and the fast tier only (the comparisons with Spark use real features)."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from fruits.streaming.outcomes import FEATURES_ARROW

    now = dt.datetime.now(dt.timezone.utc)
    write_deltalake(location, pa.table({
        "path": [f"file:/x/{i}.jpg" for i in range(start, start + rows)], "label": ["A"] * rows,
        "content_sha256": ["0" * 64] * rows, "size_bytes": [1] * rows, "modified_at": [now] * rows,
        "ingested_at": [now] * rows, "features": [[0.5, 1.0 + i % 3, float(i), 2.0] for i in range(start, start + rows)],
        "model_id": ["m"] * rows, "file_id": [None] * rows, "discovered_at": [None] * rows, "stored_path": [None] * rows,
        "attempt": [0] * rows,
    }, schema=FEATURES_ARROW), mode="append", configuration={"delta.enableChangeDataFeed": "true"})


@pytest.mark.fast
def test_the_engine_follows_the_pca_settings(tmp_path):
    from fruits.batch.local_fit import choose_engine
    from fruits.config import load_config
    from fruits.home.pca_store import PcaVersion

    def config(**pca):
        return load_config(overrides={"paths": {"home": str(tmp_path)}, "pca": pca}, environ={})

    _synthetic_features(config().features_table, 30)
    assert load_config(environ={}).pca.engine == "auto"  # the shipped setting
    assert choose_engine(Home.from_config(config(local_max_rows=30)), None, True)[0] == "local"
    assert choose_engine(Home.from_config(config(local_max_rows=29)), None, True) == ("spark", "30 rows to read > [pca] local_max_rows 29")
    last = PcaVersion(version=1, k=2, explained_variance=[0.9, 0.1], rows=25, source_version=0, fit_seconds=0,
                      fitted_at="", model_path="", model_ids=["m"])
    assert choose_engine(Home.from_config(config(local_max_rows=5)), last, True)[0] == "local"  # incremental: 5 new rows
    assert choose_engine(Home.from_config(config(local_max_rows=5)), last, False)[0] == "spark"  # --full: 30 rows
    assert choose_engine(Home.from_config(config(engine="spark", local_max_rows=10**9)), None, True)[0] == "spark"
    assert choose_engine(Home.from_config(config(engine="local", local_max_rows=0)), None, True)[0] == "local"
    remote = load_config(overrides={"paths": {"home": "s3a://bucket/fruits"}}, environ={})
    assert choose_engine(Home.from_config(remote), None, True)[0] == "spark"
    # Forced to run locally on S3, its compaction leaves the stream's tables to the stream (the only safe writer).
    from fruits.batch.compaction import compact_tables_local

    pinned = Home(remote, pinned_features=remote.features_table)  # as a refit gives it: no registry read, no server
    assert all("only safe writer" in outcome["skipped"] for outcome in compact_tables_local(pinned).values())


@pytest.mark.fast
def test_the_local_refit_runs_without_spark_on_a_synthetic_home(tmp_path):
    """The whole local refit in the fast tier: model store, tables/pca, a second (incremental) refit."""
    from deltalake import DeltaTable

    from fruits.batch.refit_pca import refit_pca_local
    from fruits.config import load_config

    config = load_config(overrides={"paths": {"home": str(tmp_path)}}, environ={})
    _synthetic_features(config.features_table, 30)
    first = refit_pca_local(config, k=2).refitted
    assert (first.method, first.rows, first.engine, first.k) == ("full", 30, "local", 2)
    assert DeltaTable(config.pca_table).to_pyarrow_table().num_rows == 30
    _synthetic_features(config.features_table, 2, start=30)
    second = refit_pca_local(config, k=2).refitted
    assert (second.method, second.rows, second.new_rows, second.fallback_reason) == ("incremental", 32, 2, None)
    table = DeltaTable(config.pca_table).to_pyarrow_table()
    assert table.num_rows == 32 and set(table.column("pca_version").to_pylist()) == {1}  # appended in v1's coordinates
    # (A fast-tier run fails if anything started a JVM: tests/conftest.py's pytest_sessionfinish.)


@pytest.mark.fast
def test_delta_rs_compaction_while_appends_keep_coming_loses_no_row(tmp_path):
    """The local refit compacts the stream's tables while the stream may append (blind appends, as the sink's)."""
    import threading

    from deltalake import DeltaTable

    from fruits.batch.compaction import compact_table
    from fruits.config import load_config
    from fruits.home.tables import FEATURES, Table

    settings = load_config(overrides={"compaction": {"min_extra_files": 5}}, environ={}).compaction
    location = str(tmp_path / "features")
    for start in range(0, 40, 2):
        _synthetic_features(location, 2, start=start)  # 20 small files
    appender = threading.Thread(target=lambda: [_synthetic_features(location, 2, start=s) for s in range(40, 80, 2)])
    appender.start()
    outcome = compact_table(None, Table(location, FEATURES), settings)
    appender.join()
    assert outcome["compacted"] and outcome["files_removed"] >= 20, outcome
    paths = DeltaTable(location).to_pyarrow_table(columns=["path"]).column("path").to_pylist()
    assert sorted(paths) == sorted(f"file:/x/{i}.jpg" for i in range(80))
    assert any(entry["operation"] == "OPTIMIZE" for entry in DeltaTable(location).history())
