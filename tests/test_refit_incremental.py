"""Incremental PCA refits: merged sufficient statistics give the components of a full Spark ML refit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import assert_same_pca, make_config

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


def test_a_pca_that_disagrees_with_the_exact_eigendecomposition_is_replaced(spark, ingested):
    """Guard for Spark ML's Java-LAPACK fallback, which gets rank-deficient covariances wrong: a PCAModel whose
    explained variance is off is replaced by the exact components of the same statistics."""
    from fruits.batch.moments import Moments
    from fruits.batch.refit_pca import _checked, pca_model

    moments = Moments.of_rows(np.stack(ingested["features"]["features"].to_numpy()))
    components, ratios = moments.principal_components()
    right = pca_model(spark, components[:, :5], ratios[:5])
    assert _checked(spark, right, components[:, :5], ratios[:5]) == (right, None)
    wrong = pca_model(spark, components[:, 5:10], ratios[5:10])
    fixed, note = _checked(spark, wrong, components[:, :5], ratios[:5])
    assert "disagreed" in note
    assert np.allclose(fixed.pc.toArray(), components[:, :5]) and np.allclose(fixed.explainedVariance.toArray(), ratios[:5])
