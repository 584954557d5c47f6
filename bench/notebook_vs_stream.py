"""Benchmark: the earlier notebook pipeline against `fruits stream --available-now`, whole commands, same photos.

The notebook (the project's starting point) read the photos with Spark's ``binaryFile`` source, featurized them in a
pandas UDF that built the Keras MobileNetV2 in each task (TensorFlow, images resized to 224 with PIL and
``preprocess_input``), wrote the features to Parquet, then fitted Spark ML's PCA (k=20) and wrote the projections.
Here it runs as written there, in its own `python` process (its own JVM, start-up included), on a copy of the
landing folder; then `fruits stream --available-now` runs on a fresh home with the same photos (JVM start, model
load or conversion, the ledger listing included). Each is timed as a whole command, as a user would.

Usage: python bench/notebook_vs_stream.py [--images 3013] [--order stream-first|notebook-first]
Prints the ratio lines first, then the JSON of every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from honest import Honest  # noqa: E402
from ingest_throughput import DEFAULT_WEIGHTS, fill_landing, run_fruits  # noqa: E402

NOTEBOOK = r'''
import sys, time
from typing import Iterator
import numpy as np, pandas as pd
from pyspark.sql import SparkSession, functions as F
from pyspark.ml.feature import PCA
from pyspark.ml.functions import array_to_vector

landing, out, weights, master = sys.argv[1:5]
started = time.perf_counter()
spark = SparkSession.builder.master(master).appName("notebook").config("spark.sql.shuffle.partitions", "8") \
    .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64").getOrCreate()
session = time.perf_counter()

@F.pandas_udf("array<float>")
def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
    import io
    import tensorflow as tf
    from PIL import Image
    model = tf.keras.applications.MobileNetV2(weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3))
    model.load_weights(weights)  # per task, as the notebook broadcast its weights and rebuilt the model
    for contents in batches:
        images = np.stack([np.asarray(Image.open(io.BytesIO(c)).convert("RGB").resize((224, 224)), dtype=np.float32)
                           for c in contents])
        features = model.predict(tf.keras.applications.mobilenet_v2.preprocess_input(images), batch_size=32, verbose=0)
        yield pd.Series(list(features.astype(np.float32)))

images = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg").option("recursiveFileLookup", "true").load(landing)
images = images.withColumn("label", F.element_at(F.split("path", "/"), -2))
images.select("path", "label", featurize("content").alias("features")).write.mode("overwrite").parquet(out + "/features")
featurized = time.perf_counter()
rows = spark.read.parquet(out + "/features").withColumn("vector", array_to_vector("features"))
model = PCA(k=20, inputCol="vector", outputCol="pca").fit(rows)
model.transform(rows).select("path", "label", "pca").write.mode("overwrite").parquet(out + "/pca")
done = time.perf_counter()
print("NOTEBOOK", session - started, featurized - session, done - featurized, spark.read.parquet(out + "/features").count())
'''


def notebook(landing: Path, out: Path, weights: str, master: str = "local[*]") -> dict:
    """Run the notebook pipeline in its own process on ``master``; its phases' seconds and the whole command's."""
    started = time.perf_counter()
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}  # workers run this interpreter, as the driver does
    result = subprocess.run(
        [sys.executable, "-c", NOTEBOOK, str(landing), str(out), weights, master], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - started
    line = next((l for l in result.stdout.splitlines() if l.startswith("NOTEBOOK ")), None)
    if result.returncode != 0 or line is None:
        sys.exit(f"the notebook pipeline failed:\n{result.stderr[-4000:]}")
    session, featurize, pca, rows = line.split()[1:]
    return {"whole_command_seconds": round(seconds, 1), "session_seconds": round(float(session), 1),
            "featurize_write_seconds": round(float(featurize), 1), "pca_seconds": round(float(pca), 1), "rows": int(rows)}


def stream(landing: Path, home: Path, weights: str, flags: list[str] = ()) -> dict:
    """`fruits stream --available-now [FLAGS]` on a fresh home whose landing holds the photos; whole-command seconds."""
    shutil.copytree(landing, home / "landing")
    seconds, log = run_fruits(["stream", "--available-now", *flags], {"FRUITS_HOME": str(home), "FRUITS_WEIGHTS": weights})
    return {"whole_command_seconds": round(seconds, 1), "log_tail": log.splitlines()[-3:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3013, help="photos (default: the 3,013 of the sample)")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--order", choices=["stream-first", "notebook-first"], default="stream-first")
    parser.add_argument("--notebook-master", default="local[*]", help="the notebook's Spark master (its own: local[*])")
    parser.add_argument("--flags", default="", help='extra `fruits stream` flags, e.g. "--precision int8"')
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)
    with tempfile.TemporaryDirectory(prefix="fruits-notebook-") as tmp:
        landing = Path(tmp) / "landing"
        fill_landing(landing, args.images)
        runs = {}
        for name in (["stream", "notebook"] if args.order == "stream-first" else ["notebook", "stream"]):
            runs[name] = stream(landing, Path(tmp) / "home", args.weights, shlex.split(args.flags)) if name == "stream" else \
                notebook(landing, Path(tmp) / "notebook", args.weights, args.notebook_master)
            print(f"{name}: {runs[name]}", file=sys.stderr, flush=True)
    ratio = runs["notebook"]["whole_command_seconds"] / runs["stream"]["whole_command_seconds"]
    featurize_ratio = runs["notebook"]["featurize_write_seconds"] / runs["stream"]["whole_command_seconds"]
    honest.ratio(f"notebook featurize + write {runs['notebook']['featurize_write_seconds']} s / fruits stream "
                 f"{args.flags or 'fp32'} whole command {runs['stream']['whole_command_seconds']} s: "
                 f"{featurize_ratio:.2f}x (target >= 3.5x fp32, >= 6x int8 on VNNI/AMX)")
    honest.ratio(f"whole commands: fruits stream {runs['stream']['whole_command_seconds']} s, notebook "
                 f"{runs['notebook']['whole_command_seconds']} s (featurize + write {runs['notebook']['featurize_write_seconds']} s"
                 f", PCA {runs['notebook']['pca_seconds']} s): {ratio:.2f}x")
    print(json.dumps({"images": args.images, "order": args.order, "runs": runs,
                      "x_notebook_whole_command": round(ratio, 2),
                      "x_notebook_featurize_write": round(featurize_ratio, 2), "flags": args.flags, **honest.finish()}, indent=2))


if __name__ == "__main__":
    main()
