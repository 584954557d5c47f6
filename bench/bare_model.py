"""Benchmark: the bare model, TensorFlow vs OpenVINO (fp32 and bf16), on pre-decoded real images, in one run.

Each configuration runs in fresh processes (spawned, so no runtime shares a process with another), on the same
pre-decoded 224x224 photos of ../shared/data/fruits360-sample; decoding is not timed. "2 proc x 1 thr" runs two
processes at once, started together behind a barrier, like two Spark tasks with one Python worker each; its rate is
the sum of both. OpenVINO runs unpinned (the service's setting) except in the row marked "pinned" (its default). Fidelity is measured against TensorFlow on the fruits ImageNet knows (ImageNet top-5 with the
with-top weights file's Dense head, cosine and max abs diff of the 1280-d features).

Usage: python bench/bare_model.py [--weights FILE] [--top-weights FILE] [--images 64] [--seconds 8]
Because other jobs may share the cores, read the ratios (same run, same load) before the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from honest import Honest  # noqa: E402

SHARED = ROOT.parent / "shared"
SAMPLE = SHARED / "data" / "fruits360-sample"
from fruits.model.accuracy import IMAGENET_CLASSES, read_head  # noqa: E402  (the classes ImageNet knows, its head)


def decoded(files: list[Path]) -> np.ndarray:
    from fruits.model.images import decode_image

    return np.stack([decode_image(p.read_bytes()) for p in files])


def decode_speed(photos: list[Path], repeats: int = 3) -> dict:
    """Milliseconds per image of ``fruits.model.images.decode_image`` (1 core): the Fruits-360 photos as they are, and one
    of them as a 12 MP phone-sized JPEG, decoded at reduced scale (the service) and in full (for comparison)."""
    import io

    from PIL import Image

    from fruits.model.images import decode_image, to_model_input

    def per_image(function, items: list[bytes]) -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            for data in items:
                function(data)
        return round((time.perf_counter() - started) / (repeats * len(items)) * 1000, 2)

    def full_decode(data: bytes) -> np.ndarray:
        return to_model_input(Image.open(io.BytesIO(data)))

    small = [p.read_bytes() for p in photos]
    buffer = io.BytesIO()
    Image.open(photos[0]).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    phone = [buffer.getvalue()]
    return {
        "fruits360_100x100_ms": per_image(decode_image, small),
        "jpeg_4000x3000_ms": per_image(decode_image, phone),
        "jpeg_4000x3000_full_scale_ms": per_image(full_decode, phone),
    }


def featurizer_for(spec: dict, weights, ir_path: str):
    if spec["runtime"] == "tensorflow":
        from fruits.model.keras import KerasFeaturizer

        return KerasFeaturizer(weights, batch_size=spec["chunk"], intra_op_threads=spec["threads"])
    from fruits.model.runtimes import OpenVinoFeaturizer

    return OpenVinoFeaturizer(weights, ir_path, spec["precision"], batch_size=spec["chunk"], threads=spec["threads"],
                           cpu_pinning=spec.get("pinned", False), views=spec.get("views", "single"))


def worker(spec: dict, weights, ir_path: str, images: np.ndarray, seconds: float, barrier, results) -> None:
    started = time.perf_counter()
    featurizer = featurizer_for(spec, weights, ir_path)
    model = featurizer.load_model()
    featurizer.run_inference(images[:16], model)  # warm-up
    ready = time.perf_counter() - started
    barrier.wait()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        featurizer.run_inference(images, model)
        count += len(images)
    elapsed = time.perf_counter() - t0
    results.put({"rate": count / elapsed, "load_seconds": ready, "rss_mib": _rss_mib(),
                 "tensorflow_imported": "tensorflow" in sys.modules})


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def features_worker(spec: dict, weights, ir_path: str, images: np.ndarray, results) -> None:
    featurizer = featurizer_for(spec, weights, ir_path)
    results.put(featurizer.run_inference(images, featurizer.load_model()))


def measure(spec: dict, weights, ir_path: str, images: np.ndarray, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(spec["procs"]), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(spec, weights, ir_path, images, seconds, barrier, results))
             for _ in range(spec["procs"])]
    for p in procs:
        p.start()
    outs = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return {**spec, "images_per_s": round(sum(o["rate"] for o in outs), 1),
            "load_seconds": round(max(o["load_seconds"] for o in outs), 2),
            "rss_mib_per_proc": round(max(o["rss_mib"] for o in outs)),
            "tensorflow_imported": any(o["tensorflow_imported"] for o in outs)}


def features(spec: dict, weights, ir_path: str, images: np.ndarray) -> np.ndarray:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    p = ctx.Process(target=features_worker, args=(spec, weights, ir_path, images, results))
    p.start()
    out = results.get()
    p.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(SHARED / "models" / "mobilenet_v2_imagenet_notop.weights.h5"))
    parser.add_argument("--top-weights", default=str(SHARED / "models" / "mobilenet_v2_imagenet.weights.h5"))
    parser.add_argument("--images", type=int, default=64, help="distinct photos in the timed loop")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per configuration")
    parser.add_argument("--per-class", type=int, default=12, help="photos per ImageNet-known class for fidelity")
    parser.add_argument("--ir-cache", help="IR cache folder to reuse (default: a new one: the conversion is timed too)")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)

    from fruits.model.weights import resolve_weights
    from fruits.model.runtimes import cpu_supports_bf16
    from fruits.model.ir import convert_once

    weights = resolve_weights(args.weights)
    with tempfile.TemporaryDirectory(prefix="fruits-bare-") as cache:
        cache = args.ir_cache or cache
        started = time.perf_counter()
        ir_path = convert_once(weights, cache)  # converts in a child: this process never imports TensorFlow
        convert_seconds = time.perf_counter() - started

        photos = sorted(SAMPLE.glob("*/*.jpg"))
        images = decoded(photos[:: max(1, len(photos) // args.images)][: args.images])
        bf16 = cpu_supports_bf16()
        specs = [
            {"runtime": "tensorflow", "precision": "fp32", "procs": 1, "threads": 2, "chunk": 32},
            {"runtime": "tensorflow", "precision": "fp32", "procs": 2, "threads": 1, "chunk": 32},
            {"runtime": "openvino", "precision": "fp32", "procs": 1, "threads": 2, "chunk": 8},
            {"runtime": "openvino", "precision": "fp32", "procs": 2, "threads": 1, "chunk": 8},
            # OpenVINO's default thread pinning: both single-thread processes land on the same core.
            {"runtime": "openvino", "precision": "fp32", "procs": 2, "threads": 1, "chunk": 8, "pinned": True},
            {"runtime": "openvino", "precision": "fp32", "procs": 2, "threads": 1, "chunk": 32},
        ]
        if bf16:
            specs += [
                {"runtime": "openvino", "precision": "bf16", "procs": 1, "threads": 2, "chunk": 8},
                {"runtime": "openvino", "precision": "bf16", "procs": 2, "threads": 1, "chunk": 8},
            ]
        speed = []
        for spec in specs:
            speed.append(measure(spec, weights, ir_path, images, args.seconds))
            print(json.dumps(speed[-1]), file=sys.stderr, flush=True)
        baseline = max(s["images_per_s"] for s in speed if s["runtime"] == "tensorflow")
        for s in speed:
            s["x_tensorflow"] = round(s["images_per_s"] / baseline, 2)

        # Fidelity on the fruits ImageNet knows.
        files, classes = [], []
        for label in IMAGENET_CLASSES:
            chosen = sorted((SAMPLE / label).glob("*.jpg"))[: args.per_class]
            files += chosen
            classes += [label] * len(chosen)
        fid_images = decoded(files)
        one = {"procs": 1, "threads": 2, "chunk": 8}
        made = {"tensorflow-fp32": features({**one, "runtime": "tensorflow", "precision": "fp32", "chunk": 32}, weights, ir_path, fid_images),
                "openvino-fp32": features({**one, "runtime": "openvino", "precision": "fp32"}, weights, ir_path, fid_images)}
        if bf16:
            made["openvino-bf16"] = features({**one, "runtime": "openvino", "precision": "bf16"}, weights, ir_path, fid_images)
    head = read_head(args.top_weights)
    reference = made["tensorflow-fp32"]
    fidelity = {}
    for name, feats in made.items():
        cosine = (feats * reference).sum(1) / np.linalg.norm(feats, axis=1) / np.linalg.norm(reference, axis=1)
        fidelity[name] = {
            "max_abs_diff_vs_tensorflow": float(np.abs(feats - reference).max()),
            "cosine_vs_tensorflow_mean": round(float(cosine.mean()), 5),
            "cosine_vs_tensorflow_min": round(float(cosine.min()), 5),
            "imagenet_top5": round(float(head.top5_hits(feats, classes).mean()), 3),
        }
    for s in speed:
        honest.ratio(f"{s['runtime']} {s['precision']} {s['procs']}x{s['threads']} chunk {s['chunk']}"
                     f"{' pinned' if s.get('pinned') else ''}: {s['images_per_s']} images/s = {s['x_tensorflow']} x TensorFlow")
    print(json.dumps({
        "bf16_supported": bf16, **honest.finish(), "conversion_seconds": round(convert_seconds, 1),
        "timed_images": len(images), "fidelity_images": len(fid_images), "speed": speed, "fidelity": fidelity,
        "decode_ms_per_image": decode_speed(photos[:: max(1, len(photos) // args.images)][: args.images],
                                            repeats=1 if args.smoke else 3),
    }, indent=2))


if __name__ == "__main__":
    main()
