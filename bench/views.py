"""Benchmark: does ``[model] views = "rot4"`` make identify better on a new recording of a fruit? (docs/models.md, "Views")

The shared sample (../shared/data/fruits360-sample) holds, per class, photos of several recordings of the fruit:
``<i>_100.jpg`` (one recording, the fruit turning about one axis) and ``r_``, ``r2_``, ``r3_`` ``<i>_100.jpg`` (the fruit
turned about another axis). The split is **by recording**, not by random photos, because random photos of one
recording have near-twins on both sides and say nothing about a fruit seen another way:

- ``plain->r``: the labelled rows (the home's features) are the plain ``<i>_100.jpg`` photos; the questions are every
  ``r*_`` photo;
- ``r->plain``: the other way round.

For each precision (OpenVINO, fp32 then int8 by default) every photo is featurized with ``views = "single"`` and with
``views = "rot4"`` through :func:`fruits.model.runtimes.make_featurizer` (the stream's own factory) after the stream's
own decoding, then identify is answered the way the product answers it: a PCA fitted on the labelled side's features
(the refit's statistics and eigendecomposition, ``fruits.batch.moments.Moments`` and ``fruits.batch.pca_fit.choose_k``
with the shipped ``[pca] k``), the labelled rows projected, and each question's 5 nearest labelled rows voting with
1/distance weights (``fruits.model.identify.nearest``, the function ``fruits identify`` and ``fruits serve`` use).
Three pairings: single both sides; rot4 both sides (a home streamed with ``--views rot4``); rot4 on the question only
(a single-view home asked with rotations added to the question: the rot4 vector is a mean of unit vectors, far
shorter than the raw vectors of a single-view home, and nearest labelled rows by Euclidean distance would then be the
shortest rows whatever their direction; so the question's rot4 direction is scaled to the length of its own single
view, ``rot4 at single length``). The 1-NN hit rate (nearest with 1 neighbour) is
printed too: issue 24 measured that one.

Usage: python bench/views.py [--precisions fp32,int8] [--per-class 0] [--classes 0] [--threads 0]
The decision rule of issue 24: keep rot4 only if rot4 both sides raises top-1 by >= 8 points over single.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
from bare_model import SAMPLE, SHARED, decoded  # noqa: E402
from honest import Honest  # noqa: E402

# The recording a sample photo belongs to: "plain" for <i>_100.jpg, "r" for r_, r2_ and r3_ (another axis).
RECORDING = re.compile(r"^(r\d*_)?")
SPLITS = {"plain->r": ("plain", "r"), "r->plain": ("r", "plain")}
# (labelled side's views, question's views)
PAIRINGS = {"single": ("single", "single"), "rot4 both sides": ("rot4", "rot4"),
            "rot4 question only": ("single", "rot4 at single length")}
# Issue 24: rot4 is kept only if it raises identify top-1 by at least this many points over single.
KEEP_POINTS = 8.0


def recording(photo: Path) -> str:
    return "r" if RECORDING.match(photo.name).group(1) else "plain"


def sample_photos(per_class: int, classes: int = 0) -> list[Path]:
    """Every photo of the sample, or ``per_class`` of each recording of each class, of every class or of the first
    ``classes`` (the smoke run)."""
    photos = []
    folders = sorted(p for p in SAMPLE.iterdir() if p.is_dir())
    for folder in folders[:classes] if classes else folders:
        files = sorted(folder.glob("*.jpg"))
        for side in ("plain", "r"):
            mine = [p for p in files if recording(p) == side]
            photos += mine[:per_class] if per_class else mine
    return photos


def featurize(config, weights, images: np.ndarray, threads: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``({views: (n, 1280) features}, {views: images/s})`` with the stream's factory, one model load per views."""
    from fruits.model.runtimes import make_featurizer

    features, rates = {}, {}
    for views in ("single", "rot4"):
        featurizer = make_featurizer(replace(config, model=replace(config.model, views=views)), weights, threads=threads)
        model = featurizer.load_model()
        featurizer.run_inference(images[:8], model)  # warm-up: the first call pays one-off allocations
        started = time.perf_counter()
        features[views] = featurizer.run_inference(images, model)
        rates[views] = len(images) / (time.perf_counter() - started)
        print(f"  {featurizer.model_id}: {len(images)} photos at {rates[views]:.1f} photos/s", flush=True)
    return features, rates


def identify_rates(config, labelled: np.ndarray, labels: np.ndarray, questions: np.ndarray, truth: np.ndarray) -> dict:
    """Identify's top-1 (5 nearest, 1/distance vote) and 1-NN hit rates of ``questions`` against ``labelled``."""
    from fruits.batch.moments import Moments
    from fruits.batch.pca_fit import choose_k
    from fruits.model.identify import Reference, nearest

    components, explained = Moments.of_rows(labelled).principal_components()
    k, _ = choose_k(explained, config.pca.k, config.pca.variance or None)
    components = components[:, :k]
    points = (labelled.astype(np.float64) @ components).astype(np.float32)
    reference = Reference(0, components, labels, points, [], np.array([]), model_version=0)
    projected = (questions.astype(np.float64) @ components).astype(np.float32)  # as fruits.model.identify does
    top1 = np.mean([nearest(reference, q)["predicted"] == t for q, t in zip(projected, truth)])
    nn1 = np.mean([nearest(reference, q, neighbours=1)["predicted"] == t for q, t in zip(projected, truth)])
    return {"top1": round(100 * float(top1), 1), "nn1": round(100 * float(nn1), 1), "k": k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(SHARED / "models" / "mobilenet_v2_imagenet_notop.weights.h5"))
    parser.add_argument("--precisions", default="fp32,int8", help="OpenVINO precisions to measure, comma-separated")
    parser.add_argument("--per-class", type=int, default=0, help="photos per class and recording (0: all)")
    parser.add_argument("--classes", type=int, default=0, help="the sample's first classes only (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: OpenVINO's choice, every core)")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)

    from fruits.config import load_config
    from fruits.model.weights import resolve_weights

    config = load_config(overrides={"model": {"weights": args.weights, "runtime": "openvino"}}, environ={})
    weights = resolve_weights(args.weights)
    photos = sample_photos(args.per_class, args.classes)
    labels = np.array([p.parent.name for p in photos])
    sides = np.array([recording(p) for p in photos])
    print(f"{len(photos)} photos of {len(set(labels))} classes: {int((sides == 'plain').sum())} plain <i>_100.jpg, "
          f"{int((sides == 'r').sum())} r*_ (another recording); PCA [pca] k = {config.pca.k}", flush=True)
    images = decoded(photos)

    results = []
    for precision in args.precisions.split(","):
        print(f"{precision}:", flush=True)
        model_config = replace(config, model=replace(config.model, precision=precision))
        features, rates = featurize(model_config, weights, images, args.threads)
        lengths = np.linalg.norm(features["single"], axis=1, keepdims=True) / np.linalg.norm(features["rot4"], axis=1, keepdims=True)
        features["rot4 at single length"] = features["rot4"] * lengths
        honest.ratio(f"{precision}: rot4 / single featurizing seconds = {rates['single'] / rates['rot4']:.2f}x "
                     f"({rates['single']:.1f} vs {rates['rot4']:.1f} photos/s)")
        for split, (labelled_side, question_side) in SPLITS.items():
            labelled, asked = sides == labelled_side, sides == question_side
            row = {"precision": precision, "split": split, "labelled": int(labelled.sum()), "questions": int(asked.sum()),
                   "photos_per_s": {v: round(r, 1) for v, r in rates.items()}}
            for name, (labelled_views, question_views) in PAIRINGS.items():
                row[name] = identify_rates(config, features[labelled_views][labelled], labels[labelled],
                                           features[question_views][asked], labels[asked])
            results.append(row)
            print(json.dumps(row), flush=True)
            single = row["single"]["top1"]
            for name in ("rot4 both sides", "rot4 question only"):
                gain = row[name]["top1"] - single
                honest.ratio(f"{precision} {split}: identify top-1 {name} - single = {gain:+.1f} points "
                             f"({single:.1f} % -> {row[name]['top1']:.1f} %; 1-NN {row['single']['nn1']:.1f} % -> "
                             f"{row[name]['nn1']:.1f} %)")
            print(f"  rot4 both sides {'meets' if row['rot4 both sides']['top1'] - single >= KEEP_POINTS else 'misses'}"
                  f" issue 24's bar of +{KEEP_POINTS:g} points on {precision} {split}", flush=True)
    print(json.dumps({"results": results, **honest.finish()}))


if __name__ == "__main__":
    main()
