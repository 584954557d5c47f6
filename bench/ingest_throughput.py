"""Benchmark: `fruits stream --available-now` end to end (landing -> ledger -> Delta) over real images, against the
bare models measured in the same run.

1. The bare models on pre-decoded photos, as in bench/bare_model.py: TensorFlow fp32 (1 process x 2 threads and
   2 processes x 1 thread; the faster is the "x TensorFlow" yardstick) and OpenVINO fp32 2 x 1 (the runtime the
   stream wraps: the "x OpenVINO" ratio says how close the pipeline runs to its model). OpenVINO's is measured again
   after the streams, since a machine's speed drifts within a run: the ratio divides by the mean of the two.
2. One `fruits stream --available-now` per variant, each on a fresh home with the same landing folder (the
   Fruits-360 sample, reused under new names above 3,013 images). The steady rate comes from the stream's own
   per-batch lines (``batch N: X files in Y s``) over the full micro-batches after the first, so JVM start-up and
   model load are left out; the whole-command time is reported too.

A variant is ``NAME=FLAGS``: extra `fruits stream` flags, e.g. ``--variant "tf=--runtime tensorflow"`` or
``--variant "delta-default=--conf spark.databricks.delta.snapshotPartitions=50"``. Without --variant, the shipped
configuration and the levers the README reports are run.

Usage: python bench/ingest_throughput.py [--images 12052] [--variant NAME=FLAGS ...] [--master local[*]]
Prints one ratio line per variant first, then the JSON of every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "fruits360-sample"
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "models" / "mobilenet_v2_imagenet_notop.weights.h5"
FRUITS = str(Path(sys.executable).with_name("fruits"))
DEFAULT_VARIANTS = [
    "shipped=",
    "bf16=--precision bf16",
    "tensorflow=--runtime tensorflow",
    "delta-default-snapshot-partitions=--conf spark.databricks.delta.snapshotPartitions=50",
    "batches-of-1000=--max-files-per-trigger 1000",
]
# The bare TensorFlow yardstick's shapes, processes x threads: the faster of them is "x TensorFlow".
TENSORFLOW_SHAPES = ("1x2", "2x1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from honest import Honest  # noqa: E402

BATCH_LINE = re.compile(r"batch (\d+): (\d+) files in ([\d.]+) s")
# The same line's per-phase seconds (fruits/streaming/progress.py): ledger, featurize, append, after_ingest.
PHASES_LINE = re.compile(r"batch (\d+): (\d+) files in [\d.]+ s .*?; phases (\{.*\})$", re.M)


# The copies' age: a backlog was written long before the stream starts. Copies just made would be younger than
# [discovery] quiet_seconds, and `--available-now` would first wait for them to be quiet, a wait no backlog has.
BACKLOG_AGE_SECONDS = 3600


def as_backlog(files: Iterable[Path]) -> None:
    """Date ``files`` back :data:`BACKLOG_AGE_SECONDS`, as a backlog's photos are."""
    modified = time.time() - BACKLOG_AGE_SECONDS
    for path in files:
        os.utime(path, (modified, modified))


def fill_landing(landing: Path, count: int, photos: Sequence[Path] | None = None) -> None:
    """Copy ``count`` real photos into class folders of ``landing`` (cycling through ``photos``, by default the whole
    sample, with new names), all modified :data:`BACKLOG_AGE_SECONDS` ago (:func:`as_backlog`; ``shutil.copytree`` of
    the folder keeps that)."""
    photos = list(photos) if photos is not None else sorted(SAMPLE.glob("*/*.jpg"))
    copies = []
    for index in range(count):
        source = photos[index % len(photos)]
        target = landing / source.parent.name / f"{index // len(photos)}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copies.append(target)
    as_backlog(copies)


def run_fruits(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run ``fruits ARGS``; returns (seconds, stderr). Exits with the log's tail if it fails."""
    started = time.perf_counter()
    result = subprocess.run([FRUITS, *args], env={**os.environ, **env}, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"fruits {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return elapsed, result.stderr


def steady_rate(batches: list[tuple[int, int, float]], skip: int = 1) -> tuple[float | None, int]:
    """Images/s over the micro-batches after the first ``skip`` that are as large as the largest (full) batch."""
    full = max((n for _, n, _ in batches), default=0)
    steady = [(n, s) for b, n, s in batches if b >= skip and n == full]
    if not steady:
        return None, 0
    return sum(n for n, _ in steady) / sum(s for _, s in steady), len(steady)


def steady_phases(log: str, skip: int = 1) -> dict[str, float]:
    """Seconds per phase summed over the steady chunks (those :func:`steady_rate` counts): where a chunk's time goes
    besides the featurizing job (the driver's ledger read, appends and archiving, while the executors wait)."""
    rows = [(int(b), int(n), json.loads(p)) for b, n, p in PHASES_LINE.findall(log)]
    full = max((n for _, n, _ in rows), default=0)
    totals: dict[str, float] = {}
    for batch, files, phases in rows:
        if batch >= skip and files == full:
            for name, seconds in phases.items():
                totals[name] = round(totals.get(name, 0.0) + seconds, 3)
    return totals


def stream_variant(name: str, flags: str, source: Path, count: int, weights: str, master: str, workdir: Path) -> dict:
    home = workdir / name
    shutil.copytree(source, home / "landing")
    env = {"FRUITS_HOME": str(home), "FRUITS_WEIGHTS": weights, "FRUITS_MASTER": master}
    seconds, log = run_fruits(["stream", "--available-now", *shlex.split(flags)], env)
    batches = [(int(b), int(n), float(s)) for b, n, s in BATCH_LINE.findall(log)]
    if sum(n for _, n, _ in batches) != count:  # the last line can be lost at exit; the rate does not need it
        print(f"{name}: progress lines account for {sum(n for _, n, _ in batches)} of {count} files", file=sys.stderr)
    rate, used = steady_rate(batches)
    phases = steady_phases(log)
    steady_files = used * max((n for _, n, _ in batches), default=0)
    model_id = re.search(r"featurizer (\S+)", log)
    result = {
        "variant": name, "flags": flags, "model_id": model_id.group(1) if model_id else None,
        "steady_images_per_s": round(rate, 1) if rate else None, "steady_batches": used,
        "steady_phase_seconds": phases,
        # The featurizing job alone (read, decode, sha256, model, Arrow to the driver): the rate the chunk would have
        # if the driver's phases overlapped it.
        "featurize_phase_images_per_s": round(steady_files / phases["featurize"], 1) if phases.get("featurize") else None,
        "whole_command_seconds": round(seconds, 1), "whole_command_images_per_s": round(count / seconds, 1),
        "batches": [{"batch": b, "files": n, "seconds": s} for b, n, s in batches],
    }
    shutil.rmtree(home, ignore_errors=True)
    return result


def bare_rates(weights: str, seconds: float, ir_cache: str, images: int = 64,
               tensorflow: tuple[str, ...] = TENSORFLOW_SHAPES) -> dict[str, float]:
    """Images/s of the bare models on ``images`` pre-decoded photos, chunks of 32 (TensorFlow) or 8 (OpenVINO, the
    stream's inference batch): ``tensorflow PxT`` for each of the ``tensorflow`` shapes (processes x threads) and
    ``openvino 2x1``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bare_model import decoded, measure

    from fruits.model.weights import resolve_weights
    from fruits.model.ir import convert_once

    photos = sorted(SAMPLE.glob("*/*.jpg"))
    timed = decoded(photos[:: len(photos) // images][:images])
    resolved = resolve_weights(weights)
    ir_path = convert_once(resolved, ir_cache)
    rates = {}
    shapes = [("tensorflow", *map(int, shape.split("x")), 32) for shape in tensorflow] + [("openvino", 2, 1, 8)]
    for runtime, procs, threads, chunk in shapes:
        spec = {"runtime": runtime, "precision": "fp32", "procs": procs, "threads": threads, "chunk": chunk}
        rates[f"{runtime} {procs}x{threads}"] = measure(spec, resolved, ir_path, timed, seconds)["images_per_s"]
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--images", type=int, default=12052, help="photos in the landing folder (default 4 x 3,013)")
    parser.add_argument("--variant", action="append", metavar="NAME=FLAGS", help="repeatable; see above")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--bare-seconds", type=float, default=10.0, help="timed seconds of the TensorFlow yardstick")
    parser.add_argument("--ir-cache", help="IR cache folder of the bare models (default: a new one)")
    parser.add_argument("--bare-images", type=int, default=64, help="distinct pre-decoded photos of the bare models")
    parser.add_argument("--tensorflow-shapes", default=",".join(TENSORFLOW_SHAPES),
                        help="processes x threads of the TensorFlow yardstick, comma-separated (the faster counts)")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    variants = [v.partition("=")[::2] for v in (args.variant or DEFAULT_VARIANTS)]

    honest = Honest.start(args)
    runs = []
    with tempfile.TemporaryDirectory(prefix="fruits-bench-") as tmp:
        ir_cache = args.ir_cache or str(Path(tmp) / "ir")
        bare = bare_rates(args.weights, args.bare_seconds, ir_cache, args.bare_images,
                          tuple(args.tensorflow_shapes.split(",")))
        print(f"bare models: {bare} images/s", file=sys.stderr, flush=True)
        source = Path(tmp) / "landing-source"
        fill_landing(source, args.images)
        for name, flags in variants:
            runs.append(stream_variant(name, flags, source, args.images, args.weights, args.master, Path(tmp)))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "batches"}), file=sys.stderr, flush=True)
        after = bare_rates(args.weights, args.bare_seconds, ir_cache, args.bare_images, tensorflow=())
    tensorflow = max(v for k, v in bare.items() if k.startswith("tensorflow"))
    openvino = round((bare["openvino 2x1"] + after["openvino 2x1"]) / 2, 1)
    for run in runs:
        run["x_tensorflow_bare"] = round((run["steady_images_per_s"] or 0) / tensorflow, 2)
        run["x_openvino_bare"] = round((run["steady_images_per_s"] or 0) / openvino, 2)
        run["featurize_phase_x_openvino_bare"] = round((run["featurize_phase_images_per_s"] or 0) / openvino, 2)
        honest.ratio(
            f"{run['variant']}: steady {run['steady_images_per_s']} images/s = {run['x_openvino_bare']} x bare OpenVINO "
            f"fp32 ({openvino} images/s, the mean of {bare['openvino 2x1']} before and {after['openvino 2x1']} after "
            f"the streams; target >= 0.85), {run['x_tensorflow_bare']} x bare TensorFlow; whole command "
            f"{run['whole_command_seconds']} s"
        )
        honest.ratio(f"{run['variant']}: featurizing job alone {run['featurize_phase_images_per_s']} images/s = "
                     f"{run['featurize_phase_x_openvino_bare']} x bare OpenVINO fp32; steady chunks' phases "
                     f"{run['steady_phase_seconds']} s")
    print(json.dumps({
        "master": args.master, "images": args.images,
        "bare_model_images_per_s": bare, "bare_openvino_after_images_per_s": after["openvino 2x1"], "runs": runs,
        **honest.finish(),
    }, indent=2))


if __name__ == "__main__":
    main()
