"""Benchmark: --precision int8 against fp32 (OpenVINO), bare model and end to end, speed and accuracy, in one run.

1. Both IRs: the fp32 conversion and the NNCF int8 quantization (calibrated on the photos shipped in
   fruits/model/calibration/), made in the per-user IR cache if not there yet (their seconds are printed when made).
2. Bare model on pre-decoded real photos (bench/bare_model.py's `measure`): fp32 and int8 interleaved, ``--rounds``
   times, as the stream runs them (2 processes x 1 thread, chunks of 8) and as `fruits identify` does (1 x 2);
   before the streams and again after them, since a machine's speed drifts within a run: the stream's steady rate
   is compared with the mean of the two (issue 25's target 1, printed with both).
3. End to end: `fruits stream --available-now` over the same landing folder (the shared sample 4 times by default,
   12,052 photos), fp32 then int8, ``--rounds`` times, on fresh homes, in batches of ``--batch`` files (by default
   the shipped ``[stream] max_files_per_trigger``, as bench/ingest_throughput.py's "shipped" variant: the steady
   rate is the product's as shipped, several full batches of it); the steady rate skips the first batch
   (bench/ingest_throughput.py's `steady_rate`), the whole command includes everything.
4. Accuracy on the features each stream stored (tables/features): ImageNet top-5 through the with-top weights
   file's Dense head, on the fruits ImageNet knows; and identify's top-1 (PCA k=20 fitted in numpy on a random 80 %
   per class, the 5 nearest vote as fruits.model.identify.nearest does) on the other 20 %, the split of
   tests/test_identify.py. Photos of the calibration set are left out of both. With ``--smoke`` the landing folder
   alternates the fruits ImageNet knows with the sample's first photos (:func:`smoke_photos`).

Usage: python bench/int8.py [--images 12052] [--rounds 1] [--seconds 8] [--batch N] [--master local[*]]
Ratio lines come first; other jobs may share the cores, so read the ratios (same run) before absolute figures.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
from bare_model import SAMPLE, SHARED, decoded, measure  # noqa: E402
from honest import Honest  # noqa: E402
from ingest_throughput import BATCH_LINE, fill_landing, run_fruits, steady_rate  # noqa: E402
from fruits.model.accuracy import IMAGENET_CLASSES, ImageNetHead, read_head  # noqa: E402
from model_accuracy import known_photos  # noqa: E402

PRECISIONS = ("fp32", "int8")


def make_irs(weights_path: str) -> tuple[object, dict[str, str], dict[str, float]]:
    """``(weights, {precision: IR path}, {step: seconds})``: the IRs in the per-user cache, made if missing."""
    from fruits.config import load_config
    from fruits.model.weights import resolve_weights
    from fruits.model.quantize import calibration_set, quantize_once
    from fruits.model.ir import convert_once, ir_cache_dir

    weights = resolve_weights(weights_path)
    config = load_config(overrides={"model": {"weights": weights_path}}, environ={})
    cache = ir_cache_dir(config)
    started = time.perf_counter()
    fp32 = convert_once(weights, cache)
    converted = time.perf_counter()
    int8 = quantize_once(weights, calibration_set(config), cache)
    seconds = {"convert_or_cache_hit": converted - started, "quantize_or_cache_hit": time.perf_counter() - converted}
    return weights, {"fp32": fp32, "int8": int8}, {k: round(v, 1) for k, v in seconds.items()}


def bare(weights, irs: dict[str, str], rounds: int, seconds: float, count: int = 64, when: str = "before") -> list[dict]:
    """Images/s of each precision and shape, interleaved fp32/int8, on ``count`` pre-decoded photos of the sample;
    each run says ``when`` it was measured (before or after the streams)."""
    photos = sorted(SAMPLE.glob("*/*.jpg"))
    images = decoded(photos[:: len(photos) // count][:count])
    runs = []
    for round_ in range(rounds):
        for procs, threads in ((2, 1), (1, 2)):
            for precision in PRECISIONS:
                spec = {"runtime": "openvino", "precision": precision, "procs": procs, "threads": threads, "chunk": 8}
                runs.append({**measure(spec, weights, irs[precision], images, seconds), "round": round_, "when": when})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    return runs


def smoke_photos() -> list[Path]:
    """The smoke run's landing photos: one of each fruit ImageNet knows, each before one of the sample's first photos.
    Those alone are all Apple Braeburn, a fruit ImageNet does not know: the smoke run's ImageNet top-5 would be nan,
    checked on no photo; alternated, both sides of :func:`accuracy`'s choice of known fruits run."""
    sample = sorted(SAMPLE.glob("*/*.jpg"))
    return [photo for pair in zip(known_photos(1), sample) for photo in pair]


def stream(precision: str, source: Path, batch: int, weights: str, master: str, home: Path) -> dict:
    """One `fruits stream --available-now` of ``source`` on the fresh ``home``; its rates and stored features."""
    from deltalake import DeltaTable

    shutil.copytree(source, home / "landing")
    env = {"FRUITS_HOME": str(home), "FRUITS_WEIGHTS": weights, "FRUITS_MASTER": master}
    flags = f"--precision {precision} --max-files-per-trigger {batch}"  # several full batches: a steady rate
    seconds, log = run_fruits(["stream", "--available-now", *shlex.split(flags)], env)
    rate, used = steady_rate([(int(b), int(n), float(s)) for b, n, s in BATCH_LINE.findall(log)])
    rows = DeltaTable(str(home / "tables" / "features")).to_pandas(columns=["path", "label", "features", "model_id"])
    shutil.rmtree(home, ignore_errors=True)
    return {
        "precision": precision, "steady_images_per_s": round(rate, 1) if rate else None, "steady_batches": used,
        "whole_command_seconds": round(seconds, 1), "rows": rows,
    }


def split_names(seed: int = 2026) -> set[str]:
    """``class/file`` names of the held-out 20 % per class (tests/test_identify.py's split)."""
    rng, held_out = random.Random(seed), set()
    for folder in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        rng.shuffle(photos)
        held_out |= {f"{folder.name}/{p.name}" for p in photos[round(len(photos) * 0.8) :]}
    return held_out


def accuracy(rows, head: ImageNetHead, held_out: set[str], calibration: set[str]) -> dict:
    """ImageNet top-5 on the fruits ImageNet knows, and identify's top-1 on the held-out photos (numpy PCA k=20)."""
    from fruits.model.identify import Reference, nearest

    # fill_landing names each copy "<pass>_<original name>": the first pass of the sample is the photo itself.
    rows = rows.assign(name=rows["label"] + "/" + rows["path"].str.rsplit("/", n=1).str[-1].str.split("_", n=1).str[1])
    rows = rows[rows["path"].str.rsplit("/", n=1).str[-1].str.startswith("0_") & ~rows["name"].isin(calibration)]
    features = np.stack(rows["features"].to_numpy()).astype(np.float32)
    known = rows["label"].isin(list(IMAGENET_CLASSES)).to_numpy()
    hits = head.top5_hits(features[known], list(rows["label"][known]))
    test = rows["name"].isin(held_out).to_numpy()
    train = features[~test].astype(np.float64)
    covariance = np.cov(train, rowvar=False)  # Spark's PCA: the top eigenvectors of the covariance, no centring on use
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    components = eigenvectors[:, np.argsort(eigenvalues)[::-1][:20]]
    reference = Reference(0, components, rows["label"][~test].to_numpy(), (train @ components).astype(np.float32), [], np.array([]),
                          model_version=0)
    predicted = [nearest(reference, vector)["predicted"] for vector in features[test].astype(np.float64) @ components]
    return {
        "imagenet_top5": round(float(hits.mean()), 4), "imagenet_photos": int(known.sum()),
        "identify_top1": round(float(np.mean(np.array(predicted) == rows["label"][test].to_numpy())), 4),
        "identify_photos": int(test.sum()),
    }


def ratio_lines(bare_runs: list[dict], streams: list[dict], scores: dict[str, dict]) -> list[str]:
    """The headline: int8 / fp32 per shape (bare), per stream round, and the accuracy differences in points."""
    lines = []
    bare_rates = {procs: {p: [r["images_per_s"] for r in bare_runs if r["precision"] == p and r["procs"] == procs]
                          for p in PRECISIONS} for procs in (2, 1)}
    for procs, threads in ((2, 1), (1, 2)):
        rates = bare_rates[procs]
        lines.append(f"bare model {procs} proc x {threads} thr: int8/fp32 = {np.sum(rates['int8']) / np.sum(rates['fp32']):.2f}x "
                     f"({np.mean(rates['int8']):.1f} vs {np.mean(rates['fp32']):.1f} images/s)")
    steady = {p: [s["steady_images_per_s"] or 0 for s in streams if s["precision"] == p] for p in PRECISIONS}
    whole = {p: [s["whole_command_seconds"] for s in streams if s["precision"] == p] for p in PRECISIONS}
    if min(steady["int8"] + steady["fp32"]) > 0:  # else no full batch after the first: raise --images or lower --batch
        lines.append(f"stream steady: int8/fp32 = {np.sum(steady['int8']) / np.sum(steady['fp32']):.2f}x "
                     f"({np.mean(steady['int8']):.1f} vs {np.mean(steady['fp32']):.1f} images/s)")
        for precision in PRECISIONS:  # issue 25's target 1: the shape the stream runs, before and after the streams
            rates = bare_rates[2][precision]
            lines.append(f"stream steady / bare model 2 proc x 1 thr, {precision}: "
                         f"{np.mean(steady[precision]) / np.mean(rates):.2f}x ({np.mean(steady[precision]):.1f} vs "
                         f"{np.mean(rates):.1f} images/s, the bare model's mean of {' and '.join(f'{r:.1f}' for r in rates)})")
    lines.append(f"stream whole command: fp32/int8 seconds = {np.sum(whole['fp32']) / np.sum(whole['int8']):.2f}x "
                 f"({np.mean(whole['int8']):.1f} vs {np.mean(whole['fp32']):.1f} s)")
    for key in ("imagenet_top5", "identify_top1"):
        lines.append(f"{key}: int8 {scores['int8'][key]:.4f} vs fp32 {scores['fp32'][key]:.4f} "
                     f"({(scores['int8'][key] - scores['fp32'][key]) * 100:+.2f} points)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(SHARED / "models" / "mobilenet_v2_imagenet_notop.weights.h5"))
    parser.add_argument("--top-weights", default=str(SHARED / "models" / "mobilenet_v2_imagenet.weights.h5"))
    parser.add_argument("--images", type=int, default=12052, help="photos in the landing folder (the sample 4 times)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved fp32/int8 rounds (bare and stream)")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per bare-model measurement")
    parser.add_argument("--batch", type=int, help="--max-files-per-trigger of the streams (default: the shipped one)")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--bare-images", type=int, default=64, help="distinct pre-decoded photos of the bare model")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)

    from fruits.config import load_config
    from fruits.model.quantize import SHIPPED_CALIBRATION, CalibrationSet

    batch = args.batch or load_config(environ={}).stream.max_files_per_trigger

    weights, irs, made_seconds = make_irs(args.weights)
    bare_runs = bare(weights, irs, args.rounds, args.seconds, args.bare_images)
    streams = []
    with tempfile.TemporaryDirectory(prefix="fruits-int8-") as tmp:
        source = Path(tmp) / "landing-source"
        fill_landing(source, args.images, smoke_photos() if args.smoke else None)
        for round_ in range(args.rounds):
            for precision in PRECISIONS:
                home = Path(tmp) / f"{precision}{round_}"
                streams.append(stream(precision, source, batch, args.weights, args.master, home))
                print(json.dumps({k: v for k, v in streams[-1].items() if k != "rows"}), file=sys.stderr, flush=True)
    bare_runs += bare(weights, irs, args.rounds, args.seconds, args.bare_images, when="after")
    calibration = {f"{Path(f).parent.name}/{Path(f).name}" for f in CalibrationSet.from_folder(SHIPPED_CALIBRATION).files}
    head, held_out = read_head(args.top_weights), split_names()
    scores = {p: accuracy(next(s["rows"] for s in streams if s["precision"] == p), head, held_out, calibration) for p in PRECISIONS}
    for line in ratio_lines(bare_runs, streams, scores):
        honest.ratio(line)
    print(json.dumps({
        "master": args.master, "images": args.images, "batch": batch, "rounds": args.rounds, **honest.finish(),
        "ir_seconds": made_seconds, "model_ids": {s["precision"]: sorted(set(s["rows"]["model_id"])) for s in streams[:2]},
        "bare": bare_runs, "streams": [{k: v for k, v in s.items() if k != "rows"} for s in streams], "accuracy": scores,
    }, indent=2))


if __name__ == "__main__":
    main()
