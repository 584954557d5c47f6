"""The reader snippets of docs/operations.md: the Delta tables read into pandas with `deltalake`, without Spark."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_config, place, sample_files

pytestmark = pytest.mark.slow


def test_features_pca_and_quarantine_tables_read_back_in_pandas(spark, weights, tmp_path):
    from deltalake import DeltaTable

    from fruits.batch.refit_pca import refit_pca
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path)
    place(sample_files("Pineapple", 5), tmp_path / "landing" / "Pineapple")
    (tmp_path / "landing" / "Pineapple" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    run_stream(spark, config, weights, available_now=True)
    refit_pca(spark, config, k=3)

    features = DeltaTable(f"{tmp_path}/tables/features").to_pandas()
    pca = DeltaTable(f"{tmp_path}/tables/pca").to_pandas()
    quarantine = DeltaTable(f"{tmp_path}/tables/quarantine").to_pandas(columns=["path", "reason"])
    old = DeltaTable(f"{tmp_path}/tables/features", version=0).to_pandas()

    assert len(features) == 5 and set(features["label"]) == {"Pineapple"}
    assert np.stack(features["features"].to_numpy()).shape == (5, 1280)
    assert len(pca) == 5 and np.stack(pca["pca"].to_numpy()).shape == (5, 3)
    assert list(quarantine.columns) == ["path", "reason"] and quarantine["path"].str.endswith("broken.png").all()
    assert len(old) == 0  # version 0 is the empty table the stream created before its first batch

    # DuckDB over the Arrow data that deltalake reads (no Spark, no DuckDB extension download).
    import duckdb

    features_arrow = DeltaTable(f"{tmp_path}/tables/features").to_pyarrow_dataset()
    pca_arrow = DeltaTable(f"{tmp_path}/tables/pca").to_pyarrow_dataset()
    per_label = duckdb.sql("SELECT label, count(*) AS n, avg(len(features)) AS dim FROM features_arrow GROUP BY label").fetchall()
    assert per_label == [("Pineapple", 5, 1280.0)]
    joined = duckdb.sql(
        "SELECT f.path, p.pca[1] AS pc1 FROM features_arrow f JOIN pca_arrow p USING (path) ORDER BY pc1"
    ).fetchall()
    assert len(joined) == 5
