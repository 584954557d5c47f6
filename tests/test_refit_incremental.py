"""Incremental PCA refits: merged sufficient statistics give the components of a full Spark ML refit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import assert_same_pca, make_config
from fruits.home.home import Home

pytestmark = pytest.mark.slow


def test_incremental_refit_equals_a_full_refit_on_the_same_rows(spark, features_home, tmp_path):
    from fruits.batch.refit_pca import refit_pca

    config, rows, append = features_home
    first = refit_pca(spark, config, k=10).refitted
    assert first.method == "full" and first.rows == 250
    append(rows.iloc[250:])
    second = refit_pca(spark, config, k=10).refitted
    assert second.method == "incremental" and second.new_rows == len(rows) - 250 and second.rows == len(rows)

    full_config = make_config(tmp_path, paths={"pca_models": str(tmp_path / "full-models"), "pca_table": str(tmp_path / "full-pca")})
    full = refit_pca(spark, full_config, k=10, incremental=False).refitted
    assert full.method == "full" and full.rows == second.rows
    assert_same_pca(second, full)

    # The pca table of the incremental version projects every row, like the full one.
    projected = spark.read.format("delta").load(config.pca_table).toPandas().sort_values("path")
    reference = spark.read.format("delta").load(full_config.pca_table).toPandas().sort_values("path")
    assert len(projected) == len(rows) and set(projected["pca_version"]) == {2}
    a, b = np.stack(projected["pca"].to_numpy()), np.stack(reference["pca"].to_numpy())
    assert np.abs(np.abs(a) - np.abs(b)).max() <= 1e-2 * np.abs(b).max()  # same up to each component's sign


def test_deleted_rows_force_a_full_refit(spark, features_home):
    from fruits.batch.refit_pca import refit_pca

    config, rows, append = features_home
    refit_pca(spark, config, k=5)
    spark.sql(f"DELETE FROM delta.`{config.features_table}` WHERE label = 'Banana'")
    again = refit_pca(spark, config, k=5).refitted
    assert again.method == "full" and "changed or deleted" in again.fallback_reason
    assert again.rows == 250 - int((rows.iloc[:250]["label"] == "Banana").sum())


def test_variance_target_picks_the_smallest_k_and_plots_are_written(spark, features_home):
    from fruits.batch.refit_pca import refit_pca

    config, _, _ = features_home
    fitted = refit_pca(spark, config, k=None, variance=0.8).refitted
    cumulative = np.cumsum(fitted.explained_variance)
    assert fitted.k == len(cumulative) and fitted.k_rule == "variance>=0.8"
    assert cumulative[-1] >= 0.8 and (fitted.k == 1 or cumulative[-2] < 0.8)
    folder = Path(config.pca_models) / f"v{fitted.version}"
    for plot in ("explained-variance.png", "pc1-pc2.png"):
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fitted.plots == ["explained-variance.png", "pc1-pc2.png"]


def test_the_model_is_the_exact_pca_and_its_spark_transform_gives_the_table_rows(spark, features_home):
    """The fit is checked against numpy's SVD of the centred rows (independent of the statistics code), and the saved
    Spark ML PCAModel's own transform gives the pca table's values."""
    from pyspark.ml.feature import PCAModel
    from pyspark.ml.functions import array_to_vector, vector_to_array

    from fruits.batch.refit_pca import refit_pca

    config, rows, _ = features_home
    fitted = refit_pca(spark, config, k=10, incremental=False).refitted
    x = np.stack(rows.iloc[:250]["features"].to_numpy()).astype(np.float64)
    _, singular, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    model = PCAModel.load(fitted.model_path)
    components = model.pc.toArray()
    assert np.abs(np.sum(components * vt[:10].T, axis=0)).min() >= 0.9999
    assert np.abs(np.array(fitted.explained_variance) - (singular**2 / (singular**2).sum())[:10]).max() <= 1e-6

    table = spark.read.format("delta").load(config.pca_table)
    vectors = spark.read.format("delta").load(config.features_table).select("path", array_to_vector("features").alias("vector"))
    by_spark = model.setInputCol("vector").setOutputCol("out").transform(vectors).select("path", vector_to_array("out").alias("spark"))
    both = table.join(by_spark, "path").toPandas()
    assert len(both) == 250
    a, b = np.stack(both["pca"].to_numpy()), np.stack(both["spark"].to_numpy())
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_small_growth_appends_new_rows_in_the_table_coordinates_and_large_growth_projects_all(spark, features_home):
    """+4 %: the new rows are appended, projected with v1 (the version the table is in); a refit killed after its
    append is redone without doubling rows; +75 %: every row is projected again, in the new version."""
    from fruits.batch.refit_pca import refit_pca
    from fruits.model.identify import Reference
    from fruits.home.pca_store import PcaModelStore

    config, rows, append = features_home
    store = PcaModelStore(config.pca_models)
    refit_pca(spark, config, k=10)
    append(rows.iloc[250:260])
    second = refit_pca(spark, config, k=10).refitted
    assert second.method == "incremental" and second.projection.startswith("new rows") and second.projected_rows == 10
    assert second.projection_version == 1 and second.rows == 260
    table = spark.read.format("delta").load(config.pca_table).toPandas().set_index("path")
    assert len(table) == 260 and set(table["pca_version"]) == {1}
    added = rows.iloc[250:260]
    expected = np.stack(added["features"].to_numpy()).astype(np.float64) @ store.components(1)
    got = np.stack(table.loc[added["path"], "pca"].to_numpy())
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    assert set(table.loc[added["path"], "source_version"]) == {second.source_version}
    reference = Reference.load(Home.from_config(config))
    assert reference.version == 1 and reference.model_version == 2 and len(reference.labels) == table["label"].notna().sum()

    append(rows.iloc[260:265])
    killed = refit_pca(spark, config, k=10).refitted  # then "killed" before its metadata: the version is not done
    (Path(config.pca_models) / f"v{killed.version}" / "metadata.json").unlink()
    redone = refit_pca(spark, config, k=10).refitted
    assert redone.version == killed.version == 3 and redone.projection.startswith("new rows")
    assert spark.read.format("delta").load(config.pca_table).count() == 265  # the killed run's rows replaced

    append(rows.iloc[265:])
    fourth = refit_pca(spark, config, k=10).refitted
    assert fourth.method == "incremental" and fourth.projection.startswith("all rows") and fourth.projection_version == 4
    table = spark.read.format("delta").load(config.pca_table).toPandas()
    assert len(table) == len(rows) == fourth.projected_rows and set(table["pca_version"]) == {4}
