"""Benchmark: full vs incremental PCA refit over a 100,000 x 1280 features table, in one run.

The rows are synthetic (a fixed random low-rank mixture plus noise, non-negative like pooled ReLU features), written
to a Delta table with the change data feed on, as the stream creates it. Steps, all with the real `refit_pca`:

1. full refit over N rows (Spark ML PCA),
2. append N/100 rows (+1 %), incremental refit (stored statistics + the new rows only),
3. full refit over the same N + N/100 rows (the reference the incremental one must equal).

It prints the fit time (statistics + eigendecomposition / Spark ML fit) and the whole refit time (which also
projects every row and rewrites tables/pca) of each, their ratios, and the incremental-vs-full component cosines.
Usage: python bench/pca_refit.py [--rows 100000] [--k 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fruits.batch.refit_pca import refit_pca  # noqa: E402
from fruits.config import load_config  # noqa: E402
from fruits.session import build_spark  # noqa: E402
from fruits.tables import FEATURES_SCHEMA, ensure_table  # noqa: E402

DIM, RANK = 1280, 64


def synthetic_rows(spark, start: int, count: int):
    """``count`` rows of the features schema; row i is a deterministic function of i."""
    import pandas as pd

    def generate(batches):
        basis = np.abs(np.random.default_rng(1).normal(size=(RANK, DIM))).astype(np.float32)
        for batch in batches:
            ids = batch["id"].to_numpy()
            rng = np.random.default_rng(int(ids[0]) + 12345)
            mix = rng.gamma(1.0, 1.0, size=(len(ids), RANK)).astype(np.float32) * np.linspace(2, 0.05, RANK, dtype=np.float32)
            features = np.maximum(mix @ basis / RANK + rng.normal(0, 0.05, size=(len(ids), DIM)).astype(np.float32), 0)
            now = pd.Timestamp.now(tz="UTC")
            yield pd.DataFrame({
                "path": [f"file:/synthetic/class-{i % 100}/{i}.jpg" for i in ids],
                "label": [f"class-{i % 100}" for i in ids],
                "content_sha256": [f"{i:064x}" for i in ids],
                "size_bytes": np.full(len(ids), 4500, dtype=np.int64),
                "modified_at": now, "ingested_at": now,
                "features": list(features),
                "model_id": "synthetic",
            })

    return spark.range(start, start + count, numPartitions=max(2, count // 12500)).mapInPandas(generate, FEATURES_SCHEMA)


def timed_refit(spark, config, k, incremental):
    started = time.perf_counter()
    fitted = refit_pca(spark, config, k=k, incremental=incremental).refitted
    return fitted, round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fruits-pca-bench-") as home:
        config = load_config(overrides={"paths": {"home": home}, "spark": {"master": args.master}}, environ={})
        spark = build_spark(config, "bench-pca", "pca")  # refit-pca's own settings (driver memory)
        ensure_table(spark, config.features_table, FEATURES_SCHEMA, "synthetic", change_feed=True)
        started = time.perf_counter()
        synthetic_rows(spark, 0, args.rows).write.format("delta").mode("append").save(config.features_table)
        write_seconds = round(time.perf_counter() - started, 1)

        first, first_seconds = timed_refit(spark, config, args.k, incremental=False)
        synthetic_rows(spark, args.rows, args.rows // 100).write.format("delta").mode("append").save(config.features_table)
        incremental, incremental_seconds = timed_refit(spark, config, args.k, incremental=True)
        assert incremental.method == "incremental", incremental
        reference_config = load_config(
            overrides={"paths": {"home": home, "pca_models": f"{home}/reference-models", "pca_table": f"{home}/reference-pca"},
                       "spark": {"master": args.master}}, environ={})
        full, full_seconds = timed_refit(spark, reference_config, args.k, incremental=False)

        from pyspark.ml.feature import PCAModel

        a = PCAModel.load(incremental.model_path).pc.toArray()
        b = PCAModel.load(full.model_path).pc.toArray()
        cosines = np.abs(np.sum(a * b, axis=0) / np.linalg.norm(a, axis=0) / np.linalg.norm(b, axis=0))
        print(json.dumps({
            "rows": args.rows, "added_rows": args.rows // 100, "k": args.k, "write_table_seconds": write_seconds,
            "full_refit": {"rows": first.rows, "fit_seconds": first.fit_seconds, "whole_seconds": first_seconds},
            "incremental_refit": {"rows": incremental.rows, "new_rows": incremental.new_rows,
                                  "fit_seconds": incremental.fit_seconds, "whole_seconds": incremental_seconds},
            "full_refit_same_rows": {"rows": full.rows, "fit_seconds": full.fit_seconds, "whole_seconds": full_seconds},
            "fit_ratio_incremental_vs_full": round(incremental.fit_seconds / full.fit_seconds, 3),
            "whole_ratio_incremental_vs_full": round(incremental_seconds / full_seconds, 3),
            "min_component_cosine": round(float(cosines.min()), 8),
            "max_explained_variance_diff": float(np.abs(np.array(incremental.explained_variance) - np.array(full.explained_variance)).max()),
        }, indent=2))
        spark.stop()


if __name__ == "__main__":
    main()
