"""Benchmark: what a PCA refit costs, as whole commands, in one run (figures in docs/refit.md).

1. **3,013 real photos**: `fruits refit-pca --k 20` (a fresh home holding the features the real stream wrote for
   the Fruits-360 sample) against the earlier notebook's PCA step on the same features (parquet in, a Python UDF
   to Spark ML vectors, ``PCA(k=20).fit``, ``transform``, parquet out), each as its own process (JVM start
   included), interleaved ``--repeats`` times; the medians' ratio is the first line printed.
2. **1,000,000 rows, +1 %**: ``--rows`` rows seeded in bulk with Spark, each one the real features of one of the
   3,013 photos (cycled) plus Gaussian noise (2 % of each dimension's spread, clipped at 0 like the ReLU6 outputs),
   a first full refit, then ``rows / 100`` more rows and the timed incremental `fruits refit-pca` (target: <= 60 s).
   ``--compare-reproject`` adds one more +1 % refit with ``[pca] reproject_growth = 0`` (every row projected
   again, as every refit did before): what the appended projection saves.

The features of the 3,013 photos come from one `fruits stream --available-now` over the sample, cached in
``--workdir`` (delete it to make them again). Everything else is made fresh each run.
Usage: python bench/pca_refit.py [--workdir /tmp/fruits-pca-bench] [--repeats 2] [--rows 1000000] [--compare-reproject]
       python bench/pca_refit.py --skip-million   # the 3,013-photo comparison only
       python bench/pca_refit.py --skip-real      # the 1,000,000-row part only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "fruits360-sample"
WEIGHTS = ROOT.parent / "shared" / "models" / "mobilenet_v2_imagenet_notop.weights.h5"
FRUITS = str(Path(sys.executable).with_name("fruits"))
sys.path.insert(0, str(ROOT / "bench"))
from honest import Honest  # noqa: E402


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``command``; (seconds, stdout + stderr). Exits with the output's tail if it fails."""
    started = time.perf_counter()
    result = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return seconds, result.stdout + result.stderr


def real_features_home(workdir: Path, photos: int | None = None) -> Path:
    """A home whose features table holds the sample's photos (all 3,013, or the first ``photos`` of them), made once
    by the real stream (cached)."""
    chosen = sorted(SAMPLE.glob("*/*.jpg"))[:photos]
    home = workdir / f"real-{len(chosen)}"
    if (home / "tables" / "features" / "_delta_log").is_dir():
        return home
    shutil.rmtree(home, ignore_errors=True)
    for photo in chosen:
        target = home / "landing" / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(photo, target)  # the stream archives the link, never the shared original
    seconds, _ = run([FRUITS, "stream", "--available-now", "--home", str(home), "--weights", str(WEIGHTS)])
    print(f"(made the features of the sample once in {seconds:.0f} s: {home})", file=sys.stderr)
    return home


def fresh_home(source: Path, home: Path) -> Path:
    """``home`` with a copy of ``source``'s features table and nothing else (no model, no pca table)."""
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(source / "tables" / "features", home / "tables" / "features")
    return home


def notebook_input(source: Path, workdir: Path) -> Path:
    """The notebook's input: the features as one plain parquet file (path, label, features)."""
    from deltalake import DeltaTable
    import pyarrow.parquet as pq

    target = workdir / "notebook-features.parquet"
    table = DeltaTable(str(source / "tables" / "features")).to_pyarrow_table(columns=["path", "label", "features"])
    pq.write_table(table, target)
    return target


def notebook_pca_step(source: str, target: str, k: int) -> None:
    """The earlier notebook's PCA step, as it was written: its own SparkSession, a Python UDF from arrays to
    vectors, Spark ML's PCA fit and transform, parquet out. Writes its in-process seconds (after Spark is up) to
    ``target.json``."""
    from pyspark.ml.feature import PCA
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import udf

    spark = SparkSession.builder.master("local[*]").config("spark.driver.memory", "4g").getOrCreate()
    started = time.perf_counter()
    to_vector = udf(lambda values: Vectors.dense(values), VectorUDT(), useArrow=False)  # a classic pickled UDF
    frame = spark.read.parquet(source).withColumn("features_vec", to_vector("features"))
    model = PCA(k=k, inputCol="features_vec", outputCol="pca_features").fit(frame)
    model.transform(frame).select("path", "label", "pca_features").write.mode("overwrite").parquet(target)
    Path(target + ".json").write_text(json.dumps({"step_seconds": round(time.perf_counter() - started, 2)}))
    spark.stop()


def compare_on_real_photos(workdir: Path, repeats: int, k: int, photos: int | None = None, also_spark: bool = False) -> dict:
    """Whole `fruits refit-pca` against the notebook's PCA step, as processes, interleaved ``repeats`` times (and the
    same refit with ``--engine spark``, if ``also_spark``)."""
    source = real_features_home(workdir, photos)
    parquet = notebook_input(source, workdir)
    notebook, refit, steps, timings, on_spark = [], [], [], [], []
    for repeat in range(repeats):
        out = workdir / "notebook-out"
        step = [sys.executable, __file__, "--notebook-step", str(parquet), str(out), str(k)]
        seconds, _ = run(step, {"PYSPARK_PYTHON": sys.executable})  # its workers need this venv's numpy
        notebook.append(seconds)
        steps.append(json.loads(Path(f"{out}.json").read_text())["step_seconds"])
        home = fresh_home(source, workdir / f"refit-{repeat}")
        seconds, _ = run([FRUITS, "refit-pca", "--home", str(home), "--k", str(k)])
        refit.append(seconds)
        record = json.loads((home / "models" / "pca" / "v1" / "metadata.json").read_text())
        timings.append({"engine": record.get("engine", "spark"), **record["timings"]})
        if also_spark:
            home = fresh_home(source, workdir / f"refit-spark-{repeat}")
            on_spark.append(run([FRUITS, "refit-pca", "--home", str(home), "--k", str(k), "--engine", "spark"])[0])
    return {
        "rows": int(source.name.split("-")[1]), "k": k, "repeats": repeats,
        "refit_command_seconds": [round(s, 1) for s in refit],
        "notebook_process_seconds": [round(s, 1) for s in notebook],
        "notebook_step_seconds_after_spark_start": steps,
        "refit_steps_seconds": timings,
        "ratio_refit_over_notebook": round(statistics.median(refit) / statistics.median(notebook), 3),
        "spark_engine_command_seconds": [round(s, 1) for s in on_spark],
        "ratio_spark_engine_over_notebook": round(statistics.median(on_spark) / statistics.median(notebook), 3) if on_spark else None,
    }


def seed_rows(spark, config, real: np.ndarray, labels: list[str], model_id: str, start: int, count: int) -> None:
    """Append ``count`` rows to the features table in bulk: row i is real photo i mod n plus small noise."""
    import pandas as pd

    from fruits.home.home import Home
    from fruits.home.tables import FEATURES_SCHEMA

    shared = spark.sparkContext.broadcast((real, labels, real.std(axis=0) * 0.02))

    def generate(batches):
        features_of, label_of, spread = shared.value
        for batch in batches:
            ids = batch["id"].to_numpy()
            rng = np.random.default_rng(int(ids[0]))
            source = ids % len(features_of)
            noisy = np.maximum(features_of[source] + rng.normal(size=(len(ids), features_of.shape[1])) * spread, 0)
            now = pd.Timestamp.now(tz="UTC")
            yield pd.DataFrame({
                "path": [f"file:/bench/seeded/{label_of[s]}/{i}.jpg" for s, i in zip(source, ids)],
                "label": [label_of[s] for s in source], "content_sha256": [f"{i:064x}" for i in ids],
                "size_bytes": np.full(len(ids), 5000, dtype=np.int64), "modified_at": now, "ingested_at": now,
                "features": list(noisy.astype(np.float32)), "model_id": model_id,
                "file_id": None, "discovered_at": pd.NaT, "stored_path": None, "attempt": 0,
            })

    frame = spark.range(start, start + count, numPartitions=max(1, count // 12500)).mapInPandas(generate, FEATURES_SCHEMA)
    Home.from_config(config).features.write_frame(frame, mode="append")


def million_rows(workdir: Path, rows: int, k: int, compare_reproject: bool, photos: int | None = None) -> dict:
    """Seed ``rows`` rows, full refit, +1 %, the timed incremental refit (and the re-project-all one if asked)."""
    from deltalake import DeltaTable

    from fruits.config import load_config
    from fruits.spark.session import build_spark
    from fruits.home.home import Home

    real_table = DeltaTable(str(real_features_home(workdir, photos) / "tables" / "features")).to_pandas(
        columns=["label", "features", "model_id"])
    real = np.stack(real_table["features"].to_numpy()).astype(np.float32)
    labels, model_id = [str(v) for v in real_table["label"]], str(real_table["model_id"].iloc[0])
    home = workdir / "million"
    shutil.rmtree(home, ignore_errors=True)
    config = load_config(overrides={"paths": {"home": str(home)}}, environ={})
    spark = build_spark(config, "bench-pca-seed", "pca")
    Home.from_config(config).features.ensure(spark)
    started = time.perf_counter()
    seed_rows(spark, config, real, labels, model_id, 0, rows)
    result = {"rows": rows, "added_rows": rows // 100, "k": k, "seed_seconds": round(time.perf_counter() - started, 1)}
    refit = [FRUITS, "refit-pca", "--home", str(home), "--k", str(k)]
    result["first_full_refit_seconds"] = round(run(refit)[0], 1)
    seed_rows(spark, config, real, labels, model_id, rows, rows // 100)
    result["incremental_refit_seconds"] = round(run(refit)[0], 1)
    result["incremental_refit"] = _metadata(home, 2)
    if compare_reproject:
        seed_rows(spark, config, real, labels, model_id, rows + rows // 100, rows // 100)
        site = workdir / "reproject-all.toml"
        site.write_text("[pca]\nreproject_growth = 0.0\n")
        result["reproject_all_refit_seconds"] = round(run([*refit, "--config", str(site)])[0], 1)
        result["reproject_all_refit"] = _metadata(home, 3)
    spark.stop()
    return result


def _metadata(home: Path, version: int) -> dict:
    record = json.loads((home / "models" / "pca" / f"v{version}" / "metadata.json").read_text())
    keys = ("method", "rows", "new_rows", "projection", "projected_rows", "fit_seconds", "timings")
    return {key: record.get(key) for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/fruits-pca-bench")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--skip-million", action="store_true")
    parser.add_argument("--skip-real", action="store_true", help="the 1,000,000-row part only")
    parser.add_argument("--compare-reproject", action="store_true")
    parser.add_argument("--also-spark", action="store_true", help="time `fruits refit-pca --engine spark` too")
    parser.add_argument("--photos", type=int, default=None, help="the first N photos of the sample (default: all 3,013)")
    Honest.add_arguments(parser)
    parser.add_argument("--notebook-step", nargs=3, metavar=("IN", "OUT", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.notebook_step:
        notebook_pca_step(args.notebook_step[0], args.notebook_step[1], int(args.notebook_step[2]))
        return
    honest = Honest.start(args)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    real = None if args.skip_real else compare_on_real_photos(workdir, args.repeats, args.k, args.photos, args.also_spark)
    million = None if args.skip_million else million_rows(workdir, args.rows, args.k, args.compare_reproject, args.photos)
    if real:
        honest.ratio(f"refit over {real['rows']:,} real photos / notebook PCA step (whole processes, medians): "
                     f"{real['ratio_refit_over_notebook']}x (target <= 1; engine {real['refit_steps_seconds'][0]['engine']})")
        if real["ratio_spark_engine_over_notebook"] is not None:
            honest.ratio(f"the same refit with --engine spark / notebook PCA step: {real['ratio_spark_engine_over_notebook']}x")
    if million:
        honest.ratio(f"refit after +1 % at {million['rows']:,} rows, whole command: {million['incremental_refit_seconds']} s "
                     "(target <= 60 s)")
        if "reproject_all_refit_seconds" in million:
            honest.ratio(f"same with every row projected again: {million['reproject_all_refit_seconds']} s")
    print(json.dumps({"real_photos": real, "million": million, **honest.finish()}, indent=2))


if __name__ == "__main__":
    main()
