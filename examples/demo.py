"""End-to-end demo of Fruits! on the bundled sample photos, in one Python process with one SparkSession.

What it does, in order:

1. (Re)creates the demo home folder HOME and copies ``examples/sample-images/<Class>/<file>.jpg`` into
   ``HOME/landing/<Class>/`` with `fruits drop`'s code (atomic, recorded in the file ledger), as a real producer must.
2. Runs the ingestion stream once with an available-now trigger: every landed image -> MobileNetV2 features ->
   ``HOME/tables/features`` (or ``HOME/tables/quarantine``).
3. Refits PCA (k=5 by default: the sample is small) over the features table -> ``HOME/tables/pca``.
4. Prints a summary (the same report as ``fruits status``) and the first rows of the pca table, read with the
   ``deltalake`` package into pandas, without Spark.

Run it with ``make demo``, or::

    .venv/bin/python examples/demo.py --home demo-home --weights imagenet
    .venv/bin/python examples/demo.py --home demo-home --weights path/to/mobilenet_v2_notop.weights.h5

HOME is deleted first when it already exists and looks like a demo home (it holds a ``landing`` folder, or is
empty); any other existing path is left alone and the demo stops with an error.
The sample photos are Fruits-360 images under CC BY-SA 4.0: see ``examples/SAMPLE-IMAGES-ATTRIBUTION.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from fruits.config import Config, ConfigError, load_config
from fruits.home.home import Home
from fruits.model.weights import WeightsUnavailable

# The demo uses the installed package (`make demo` installs it; so does a plain `pip install .`) and its own photos.
SAMPLE_IMAGES = Path(__file__).resolve().parent / "sample-images"

log = logging.getLogger("fruits.demo")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fruits! demo: land the sample photos, stream them into Delta, refit PCA, print a summary."
    )
    parser.add_argument("--home", default="demo-home", help="demo home folder, recreated on each run (default demo-home)")
    parser.add_argument(
        "--weights", default="imagenet", help="'imagenet' (Keras download, cached) or a local MobileNetV2 weights file"
    )
    parser.add_argument("--k", type=int, default=5, help="principal components of the PCA refit (default 5)")
    parser.add_argument("--master", help="Spark master URL (default: the configuration's, local[*])")
    parser.add_argument("--log-level", default="INFO", help="Python log level (default INFO)")
    return parser.parse_args(argv)


def reset_home(home: Path) -> None:
    """Delete ``home`` if it is a previous demo's (has ``landing/``) or an empty folder; refuse anything else."""
    if not os.path.lexists(home):
        return
    if home.is_dir() and not home.is_symlink() and ((home / "landing").is_dir() or not any(home.iterdir())):
        log.info("removing the previous demo home %s", home)
        shutil.rmtree(home)
        return
    raise ConfigError(
        f"--home {home} exists and does not look like a demo home (no landing/ folder, not empty); "
        "pick another --home or remove it yourself"
    )


def land_samples(source: Path, config: Config) -> int:
    """Land ``source/<Class>/<image>`` as ``landing/<Class>/<image>`` the way users do, with `fruits drop`'s code
    (atomic, recorded in the file ledger); returns the number of files placed."""
    from fruits.landing.drop import LedgerRecorder, drop, local_folder

    landing = local_folder(config.landing)
    extensions = list(config.stream.extensions)
    results = drop([source], landing, extensions, recorder=LedgerRecorder(Home.from_config(config).ledger, landing, "drop"))
    return sum(result.note == "placed" for result in results)


def pca_preview(config: Config, rows: int = 8) -> str:
    """The first ``rows`` rows of the pca table, read with ``deltalake`` into pandas (no Spark)."""
    import pandas as pd

    pca = Home.from_config(config).pca
    if not pca.exists():
        return f"(no pca table at {pca.location})"
    frame = pca.read().to_pandas().sort_values(["label", "path"]).head(rows)
    preview = pd.DataFrame(
        {
            "label": frame["label"],
            "file": frame["path"].map(lambda p: p.rsplit("/", 1)[-1]),
            "pca": frame["pca"].map(lambda v: "[" + ", ".join(f"{x:7.3f}" for x in v) + "]"),
            "pca_version": frame["pca_version"],
            "source_version": frame["source_version"],
        }
    )
    return preview.to_string(index=False)


def run(args: argparse.Namespace) -> int:
    from fruits.model.weights import resolve_weights
    from fruits.reports.status import collect_status, format_status

    started = time.monotonic()
    config = load_config(
        overrides={
            "paths": {"home": args.home},
            "spark": {"master": args.master},
            "model": {"weights": args.weights},
            "pca": {"k": args.k},
        }
    )
    home = Path(config.home)
    if "://" in config.home or not home.is_absolute():
        raise ConfigError(f"--home {args.home}: the demo needs a local folder")
    k = config.pca.k
    if k < 1:
        raise ConfigError(f"--k {k}: must be at least 1")

    # Resolve (and, for "imagenet", download) the weights before the JVM starts: fail fast and clearly.
    weights = resolve_weights(config.model.weights)
    log.info("weights %s (%s)", weights.model_id, weights.path)

    reset_home(home)
    landed = land_samples(SAMPLE_IMAGES, config)
    if landed == 0:
        raise ConfigError(f"no sample image found under {SAMPLE_IMAGES}")
    log.info("landed %d sample images in %s", landed, config.landing)

    from fruits.batch.refit_pca import refit_pca
    from fruits.batch.schedule import log_outcome
    from fruits.spark.session import build_spark
    from fruits.streaming.ingest import run_stream

    spark = build_spark(config, "demo")
    try:
        files = run_stream(spark, config, weights, available_now=True)
        log.info("stream read %d files", files)
        outcome = refit_pca(spark, config, k)
        log_outcome(outcome)
    finally:
        spark.stop()

    report = collect_status(Home.from_config(config))
    print()
    print("=== Fruits! demo summary ===")
    print(format_status(report))
    if outcome.refitted is not None:
        v = outcome.refitted
        print(
            f"refit v{v.version}: k={v.k}, {v.rows} rows of features version {v.source_version}, "
            f"explained variance {sum(v.explained_variance):.3f} "
            f"[{', '.join(f'{x:.3f}' for x in v.explained_variance)}], fit in {v.fit_seconds:.1f} s"
        )
    else:
        print(f"refit skipped: {outcome.skipped_reason}")
    print()
    print(f"pca table (first rows, read with deltalake, no Spark): {config.pca_table}")
    print(pca_preview(config))
    print()
    print(f"landed {landed} images, the stream read {files}; done in {time.monotonic() - started:.1f} s")
    print(f"inspect it again any time with: fruits status --home {config.home}")

    features = report["features"].get("rows", 0) if report["features"]["exists"] else 0
    quarantined = report["quarantine"].get("rows", 0) if report["quarantine"]["exists"] else 0
    ok = True
    if features + quarantined != landed:
        log.error("expected %d rows in features + quarantine, found %d + %d", landed, features, quarantined)
        ok = False
    if outcome.refitted is None:
        log.error("the PCA refit made no model: %s", outcome.skipped_reason)
        ok = False
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from fruits.cli import configure_logging

    configure_logging(args.log_level)
    try:
        return run(args)
    except (ConfigError, WeightsUnavailable) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
