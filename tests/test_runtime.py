"""The fast runtime (OpenVINO, converted from the Keras model) against TensorFlow itself, on real images."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import NOTOP_WEIGHTS, ROOT, SAMPLE, TOP_WEIGHTS, IMAGENET_CLASSES, make_config, sample_files
from fruits.images import decode_image
from fruits.model import MobileNetV2Handler, resolve_weights
from fruits.runtimes import OpenVinoHandler, convert_once, cpu_supports_bf16, make_handler, same_features


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runtime-cache")


@pytest.fixture(scope="module")
def images():
    """16 real photos of 8 classes of the shared sample."""
    classes = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir())[::4][:8]
    files = [f for label in classes for f in sample_files(label, 2)]
    assert len(files) == 16
    return np.stack([decode_image(p.read_bytes()) for p in files])


@pytest.fixture(scope="module")
def tf_features(weights, images):
    handler = MobileNetV2Handler(weights, batch_size=32)
    return handler.run_inference(images, handler.load_model())


def _handler(config_home, precision="fp32"):
    config = make_config(config_home, model={"runtime": "openvino", "precision": precision})
    return make_handler(config, resolve_weights(str(NOTOP_WEIGHTS)))


def test_openvino_features_equal_tensorflow(tmp_path, images, tf_features):
    handler = _handler(tmp_path)
    assert isinstance(handler, OpenVinoHandler) and handler.batch_size == 8
    features = handler.run_inference(images, handler.load_model())  # 16 images: chunks of 8
    assert features.shape == (16, 1280) and features.dtype == np.float32
    assert np.abs(features - tf_features).max() <= 1e-4
    # Odd sizes (dynamic batch: chunks of 5, 5, 1) give the same rows.
    odd = OpenVinoHandler(handler.weights, handler.ir_path, batch_size=5)
    assert np.abs(odd.run_inference(images[:11], odd.load_model()) - tf_features[:11]).max() <= 1e-4


def test_conversion_is_cached_by_weights_hash(tmp_path):
    weights = resolve_weights(str(NOTOP_WEIGHTS))
    first = convert_once(weights, tmp_path)
    mtime = os.stat(first).st_mtime_ns
    assert convert_once(weights, tmp_path) == first and os.stat(first).st_mtime_ns == mtime  # not converted again
    assert weights.sha256[:32] in first and first.startswith(str(tmp_path / "openvino"))
    top = convert_once(resolve_weights(str(TOP_WEIGHTS)), tmp_path)
    assert top != first
    assert sorted(p.name for p in (tmp_path / "openvino").iterdir()) == sorted(
        [os.path.basename(os.path.dirname(first)), os.path.basename(os.path.dirname(top))]
    )  # no temporary folder left behind


def test_model_id_names_runtime_and_precision(tmp_path, weights):
    prefix = weights.model_id
    assert _handler(tmp_path).model_id == prefix + "/openvino-fp32"
    config = make_config(tmp_path, model={"runtime": "tensorflow"})
    assert make_handler(config, weights).model_id == prefix + "/tensorflow-fp32"
    assert same_features(prefix + "/openvino-fp32", prefix + "/tensorflow-fp32")
    assert same_features(prefix + "/openvino-fp32", prefix)  # rows written before runtimes were recorded
    assert not same_features(prefix + "/openvino-bf16", prefix + "/openvino-fp32")
    from fruits.config import ConfigError

    with pytest.raises(ConfigError, match="bf16 needs --runtime openvino"):
        make_handler(make_config(tmp_path, model={"runtime": "tensorflow", "precision": "bf16"}), weights)


def test_worker_side_openvino_never_imports_tensorflow(tmp_path):
    """A fresh process (like a Python worker) loads the handler and featurizes bytes without importing TensorFlow."""
    handler = _handler(tmp_path)  # converts on this (driver) side
    photos = [str(p) for p in sample_files("Banana", 3)]
    script = textwrap.dedent(
        f"""
        import pickle, sys
        import pandas as pd
        handler = pickle.loads({pickle_bytes(handler)!r})
        from fruits.featurize import featurize_contents
        from fruits.model import shared_model
        contents = pd.Series([open(p, "rb").read() for p in {photos!r}] + [b"not an image"])
        out = featurize_contents(contents, handler, shared_model(handler), 50_000_000)
        assert [len(v) for v in out["features"][:3]] == [1280] * 3 and out["error"][3], out
        print("tensorflow" in sys.modules, "keras" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "False"]


def pickle_bytes(obj) -> bytes:
    import pickle

    return pickle.dumps(obj)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_bf16_fidelity_cosine_and_imagenet_top5(tmp_path, images, tf_features):
    if not cpu_supports_bf16():
        pytest.skip("this CPU has no bf16 support (AVX512_BF16 or AMX): --precision bf16 is refused here")
    handler = _handler(tmp_path, "bf16")
    assert handler.model_id.endswith("/openvino-bf16")
    features = handler.run_inference(images, handler.load_model())
    cosine = _cosine(features, tf_features)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, cosine

    # ImageNet top-5 of the fruits ImageNet knows, with the with-top file's head: bf16 keeps fp32's hit rate (±5 %).
    import h5py

    with h5py.File(TOP_WEIGHTS, "r") as f:
        dense = next(f["layers"][k]["vars"] for k in f["layers"] if k.startswith("dense") or k == "predictions")
        kernel, bias = dense["0"][()], dense["1"][()]
    rates = {}
    for precision in ("fp32", "bf16"):
        h = _handler(tmp_path, precision)
        model, hits = h.load_model(), []
        for label, index in IMAGENET_CLASSES.items():
            batch = np.stack([decode_image(p.read_bytes()) for p in sample_files(label, 12)])
            top5 = np.argsort(-(h.run_inference(batch, model) @ kernel + bias), axis=1)[:, :5]
            hits.append((top5 == index).any(axis=1).mean())
        rates[precision] = float(np.mean(hits))
    assert rates["fp32"] >= 0.9 and rates["bf16"] >= rates["fp32"] - 0.05, rates


@pytest.mark.fast
def test_runtime_and_precision_flags_reach_the_config(monkeypatch):
    from fruits.cli import build_parser, config_from_args

    for command in ("stream", "identify"):
        extra = ["photo.jpg"] if command == "identify" else []
        args = build_parser().parse_args([command, *extra, "--runtime", "tensorflow", "--precision", "bf16"])
        model = config_from_args(args).model
        assert (model.runtime, model.precision) == ("tensorflow", "bf16")
    monkeypatch.setenv("FRUITS_RUNTIME", "tensorflow")
    model = config_from_args(build_parser().parse_args(["stream"])).model
    assert (model.runtime, model.precision) == ("tensorflow", "fp32")
    monkeypatch.delenv("FRUITS_RUNTIME")
    assert config_from_args(build_parser().parse_args(["stream"])).model.runtime == "openvino"
