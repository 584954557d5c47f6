"""Benchmark: ImageNet top-5 on the stored vectors of each model (docs/models.md, "Accuracy per model"), and the
figures of precision auto's gate (docs/models.md, "Precision `auto`: the accuracy gate").

Each model (OpenVINO; fp32, int8, and bf16 where the CPU runs it; views single and rot4) is made by
:func:`fruits.model.runtimes.make_featurizer`, the stream's own factory, and its vectors are what the stream stores:
:func:`fruits.model.udf.featurize_contents` (the UDF's function: decoding, inference, views) on the photos' bytes.
The accuracy is ImageNet's own classifier (the with-top weights file's head, :mod:`fruits.model.accuracy`) on those
vectors: the share of the sample's photos of the 13 fruits ImageNet knows (23 photos each, 299 in all, not only the
calibration photos) whose ImageNet class is in the top 5. A rot4 vector (a mean of unit vectors) is far shorter
than the raw vectors the head was trained on, so its rows also give the top-5 of its direction at the length of the
same photo's single-view vector.

The gate's figures: each precision against fp32 on the calibration photos, with the gate's own rule
(:func:`fruits.model.accuracy.judge`), plus the top-1 agreement with fp32 that the gate does not use.

Usage: python bench/model_accuracy.py [--per-class 0] [--precisions fp32,int8,bf16] [--views single,rot4]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
from bare_model import SAMPLE, SHARED  # noqa: E402
from honest import Honest  # noqa: E402


def known_photos(per_class: int) -> list[Path]:
    """The sample's photos of the fruits ImageNet knows (``per_class`` of each, every one with 0)."""
    from fruits.model.accuracy import IMAGENET_CLASSES

    photos = []
    for label in IMAGENET_CLASSES:
        files = sorted((SAMPLE / label).glob("*.jpg"))
        photos += files[:per_class] if per_class else files
    return photos


def stored_vectors(config, weights, contents, single: dict | None = None) -> np.ndarray:
    """What the stream stores for these photos' bytes under ``config``'s model: the UDF's own function. A single-view
    model, once compiled, goes in ``single`` (featurizer -> compiled model) for the gate to reuse."""
    from fruits.model.runtimes import make_featurizer
    from fruits.model.udf import featurize_contents

    featurizer = make_featurizer(config, weights)
    model = featurizer.load_model()
    if single is not None and config.model.views == "single":
        single[featurizer] = model
    out = featurize_contents(contents, featurizer, model, config.model.max_pixels)
    assert not out["error"].notna().any(), out["error"].dropna().tolist()  # every photo of the sample decodes
    return np.stack(out["features"].to_numpy()).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(SHARED / "models" / "mobilenet_v2_imagenet_notop.weights.h5"))
    parser.add_argument("--head-weights", default=str(SHARED / "models" / "mobilenet_v2_imagenet.weights.h5"))
    parser.add_argument("--per-class", type=int, default=0, help="photos per known fruit (0: all of the sample's)")
    parser.add_argument("--precisions", default="fp32,int8,bf16", help="bf16 is left out where the CPU cannot run it")
    parser.add_argument("--views", default="single,rot4")
    parser.add_argument("--ir-cache", default="", help="[model] ir_cache (default: the per-user cache)")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)

    import pandas as pd

    from fruits.config import load_config
    from fruits.model.accuracy import judge, known_fruit, load_photos, read_head
    from fruits.model.quantize import calibration_set
    from fruits.model.runtimes import cpu_supports_bf16, make_featurizer
    from fruits.model.weights import resolve_weights

    config = load_config(overrides={"model": {"weights": args.weights, "head_weights": args.head_weights,
                                              "runtime": "openvino", "ir_cache": args.ir_cache}}, environ={})
    weights, head = resolve_weights(args.weights), read_head(args.head_weights)
    precisions = [p for p in args.precisions.split(",") if p != "bf16" or cpu_supports_bf16()]
    photos = known_photos(args.per_class)
    labels = [known_fruit(p) for p in photos]
    contents = pd.Series([p.read_bytes() for p in photos])

    table, compiled = {}, {}
    for precision in precisions:
        single = None
        for views in args.views.split(","):
            model = replace(config, model=replace(config.model, precision=precision, views=views))
            vectors = stored_vectors(model, weights, contents, compiled)
            name = f"openvino-{precision}" + ("" if views == "single" else f"+{views}")
            hits = head.top5_hits(vectors, labels)
            table[name] = {"imagenet_top5": round(float(hits.mean()), 4), "hits": int(hits.sum()), "photos": len(hits)}
            if views == "single":
                single = vectors
            elif single is not None:
                # rot4's vector is a mean of unit vectors, about 1/20 of a raw vector's length: the head's bias then
                # outweighs it. Its direction, at the length of the same photo's single-view vector, is what the
                # head can judge.
                scaled = vectors * (np.linalg.norm(single, axis=1) / np.linalg.norm(vectors, axis=1))[:, None]
                table[name]["imagenet_top5_at_single_length"] = round(float(head.top5_hits(scaled, labels).mean()), 4)
            print(json.dumps({name: table[name]}), file=sys.stderr, flush=True)
    reference = table["openvino-fp32"]["imagenet_top5"] if "openvino-fp32" in table else None
    for name, row in table.items():
        against = "" if reference is None else f" ({(row['imagenet_top5'] - reference) * 100:+.1f} points vs fp32)"
        scaled = row.get("imagenet_top5_at_single_length")
        honest.ratio(f"{name}: ImageNet top-5 on stored vectors {row['imagenet_top5']:.2%} "
                     f"({row['hits']}/{row['photos']} photos of the fruits ImageNet knows){against}"
                     + ("" if scaled is None else f"; at the single view's length {scaled:.2%}"))

    # The gate, as precision auto runs it: every precision against fp32 on the calibration photos (single view).
    calibration = calibration_set(config)
    gate_labels = [known_fruit(path) for path in calibration.files]
    images = load_photos(calibration.files, config.model.image_size)
    features = {}
    for precision in precisions:
        featurizer = make_featurizer(replace(config, model=replace(config.model, precision=precision)), weights)
        model = compiled[featurizer] if featurizer in compiled else featurizer.load_model()  # the table's, if it made it
        features[precision] = featurizer.run_inference(images, model)
    gate = {}
    if "fp32" in features:
        for precision, vectors in features.items():
            result = judge(precision, vectors, features["fp32"], head, gate_labels)
            agreement = float((head.top(vectors, 1) == head.top(features["fp32"], 1)).mean())
            gate[precision] = {"passed": result.passed, "imagenet_top5": result.imagenet_top5,
                               "top1_kept": result.top1_kept, "top1_agreement": round(agreement, 4)}
            honest.ratio(f"gate {precision}: {'passed' if result.passed else 'failed'}: {result.reason}; top-1 "
                         f"agreement with fp32 (not used) {agreement:.1%}")
    print(json.dumps({"models": table, "gate": gate, "calibration_photos": len(calibration.files),
                      "gate_photos": sum(label is not None for label in gate_labels), **honest.finish()}, indent=2))


if __name__ == "__main__":
    main()
