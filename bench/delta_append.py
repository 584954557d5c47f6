"""Benchmark: what the stream's idempotent Delta append costs, in one JVM, in one run.

The stream's sink appends each micro-batch with ``txnAppId`` / ``txnVersion`` (exactly-once). This times Delta appends
of 10 feature rows (the features table's schema, change data feed on, as the stream creates it) to fresh tables:

- ``idempotent``: with txnAppId + txnVersion, as the stream writes (Delta checks the table's set transactions first);
- ``plain``: the same append without them;
- ``snapshot-partitions-50``: idempotent, with Delta's default ``spark.databricks.delta.snapshotPartitions`` (the
  service sets 2 in conf/fruits.toml).

Each variant makes ``--appends`` appends; the median leaves out the first two (warm-up). The checkpoint every
10th commit shows as the slow outlier. A smoke run (``--smoke --appends 1``) appends once per variant, with no
warm-up variant (the idempotent one again) and no warm-up appends. Usage: python bench/delta_append.py [--appends 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fruits.config import load_config  # noqa: E402
from fruits.spark.session import build_spark  # noqa: E402
from fruits.home.tables import FEATURES, FEATURES_SCHEMA, Table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from honest import Honest  # noqa: E402

VARIANTS = {
    "warm-up": (True, {}),
    "idempotent": (True, {}),
    "plain": (False, {}),
    "snapshot-partitions-50": (True, {"spark.databricks.delta.snapshotPartitions": "50"}),
    "idempotent-again": (True, {}),
}


def time_appends(spark, rows, table: str, appends: int, idempotent: bool, settings: dict[str, str]) -> list[float]:
    """Seconds of each of ``appends`` appends of ``rows`` to a new table at ``table``."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        Table(table, FEATURES).ensure(spark)
        seconds = []
        for batch_id in range(appends):
            # Spark's own Delta writer, as the stream used it before delta-rs appends: what this bench compares
            writer = rows.write.format("delta").mode("append")
            if idempotent:
                writer = writer.option("txnAppId", "bench").option("txnVersion", batch_id)
            started = time.perf_counter()
            writer.save(table)
            seconds.append(round(time.perf_counter() - started, 3))
        return seconds
    finally:
        for key, value in previous.items():
            spark.conf.unset(key) if value is None else spark.conf.set(key, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=10)
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)
    with tempfile.TemporaryDirectory(prefix="fruits-delta-append-") as home:
        config = load_config(overrides={"paths": {"home": home}, "spark": {"master": "local[2]"}}, environ={})
        spark = build_spark(config, "bench-delta-append", "stream")
        now = dt.datetime(2026, 1, 1)
        rows = spark.createDataFrame(
            [(f"file:/landing/Banana/{i}.jpg", "Banana", "0" * 64, 5000, now, now, [0.1] * 1280, "bench", None, None, None, 0) for i in range(10)],
            FEATURES_SCHEMA,
        ).cache()
        rows.count()
        results = {}
        warm_up = 0 if args.smoke else 2  # appends left out of each median
        for name, (idempotent, settings) in VARIANTS.items():
            if args.smoke and name == "warm-up":
                continue
            seconds = time_appends(spark, rows, f"{home}/{name}", args.appends, idempotent, settings)
            results[name] = {"median_s": statistics.median(seconds[warm_up:]), "seconds": seconds}
            print(name, results[name], file=sys.stderr, flush=True)
        spark.stop()
    plain = results["plain"]["median_s"]
    for name in results:
        if name not in ("plain", "warm-up"):
            honest.ratio(f"{name} / plain append, median seconds: {results[name]['median_s'] / plain:.2f}x")
    print(json.dumps({"appends": args.appends, "rows_per_append": 10, "variants": results, **honest.finish()}, indent=2))


if __name__ == "__main__":
    main()
