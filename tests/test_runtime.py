"""The fast runtime (OpenVINO, converted from the Keras model) against TensorFlow itself, on real images."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import NOTOP_WEIGHTS, ROOT, SAMPLE, TOP_WEIGHTS, IMAGENET_CLASSES, make_config, place, sample_files
from fruits.model.images import decode_image
from fruits.model.keras import KerasFeaturizer
from fruits.model.weights import resolve_weights
from fruits.model.runtimes import OpenVinoFeaturizer, cpu_supports_bf16, make_featurizer, same_features
from fruits.model.ir import convert_once


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
    featurizer = KerasFeaturizer(weights, batch_size=32)
    return featurizer.run_inference(images, featurizer.load_model())


def _featurizer(config_home, precision="fp32"):
    config = make_config(config_home, model={"runtime": "openvino", "precision": precision})
    return make_featurizer(config, resolve_weights(str(NOTOP_WEIGHTS)))


def test_openvino_features_equal_tensorflow(tmp_path, images, tf_features):
    featurizer = _featurizer(tmp_path)
    assert isinstance(featurizer, OpenVinoFeaturizer) and featurizer.batch_size == 8
    features = featurizer.run_inference(images, featurizer.load_model())  # 16 images: chunks of 8
    assert features.shape == (16, 1280) and features.dtype == np.float32
    assert np.abs(features - tf_features).max() <= 1e-4
    # Odd sizes (dynamic batch: chunks of 5, 5, 1) give the same rows.
    odd = OpenVinoFeaturizer(featurizer.weights, featurizer.ir_path, batch_size=5)
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
    assert _featurizer(tmp_path).model_id == prefix + "/openvino-fp32"
    config = make_config(tmp_path, model={"runtime": "tensorflow"})
    assert make_featurizer(config, weights).model_id == prefix + "/tensorflow-fp32"
    assert same_features(prefix + "/openvino-fp32", prefix + "/tensorflow-fp32")
    assert same_features(prefix + "/openvino-fp32", prefix)  # rows written before runtimes were recorded
    assert not same_features(prefix + "/openvino-bf16", prefix + "/openvino-fp32")
    assert not same_features(prefix + "/openvino-int8", prefix + "/openvino-fp32")
    assert not same_features(prefix + "/openvino-int8", prefix)
    from fruits.config import ConfigError

    with pytest.raises(ConfigError, match="bf16 needs --runtime openvino"):
        make_featurizer(make_config(tmp_path, model={"runtime": "tensorflow", "precision": "bf16"}), weights)
    with pytest.raises(ConfigError, match="int8 needs --runtime openvino"):
        make_featurizer(make_config(tmp_path, model={"runtime": "tensorflow", "precision": "int8"}), weights)


def test_worker_side_openvino_never_imports_tensorflow(tmp_path):
    """A fresh process (like a Python worker) loads the featurizer and featurizes bytes without importing TensorFlow."""
    featurizer = _featurizer(tmp_path)  # converts on this (driver) side
    photos = [str(p) for p in sample_files("Banana", 3)]
    script = textwrap.dedent(
        f"""
        import pickle, sys
        import pandas as pd
        featurizer = pickle.loads({pickle_bytes(featurizer)!r})
        from fruits.model.udf import featurize_contents
        from fruits.model.featurizer import shared_model
        contents = pd.Series([open(p, "rb").read() for p in {photos!r}] + [b"not an image"])
        out = featurize_contents(contents, featurizer, shared_model(featurizer), 50_000_000)
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


@pytest.fixture(scope="module")
def imagenet_head(tmp_path_factory):
    """The with-top weights file's ImageNet classifier (Dense 1280 -> 1000), as the product reads it."""
    from fruits.model.accuracy import imagenet_head

    return imagenet_head(make_config(tmp_path_factory.mktemp("head")))


def imagenet_top5_rate(featurizer, head, per_class: int | None = None, exclude: frozenset[str] = frozenset()) -> float:
    """Share of the photos of the fruits ImageNet knows (``per_class`` of each class, all by default, less
    ``exclude``) whose ImageNet class is in the top 5 of ``featurizer``'s features through the ImageNet head."""
    model, hits = featurizer.load_model(), []
    for label in IMAGENET_CLASSES:
        files = [p for p in sample_files(label, per_class) if f"{label}/{p.name}" not in exclude]
        batch = np.stack([decode_image(p.read_bytes()) for p in files])
        hits += list(head.top5_hits(featurizer.run_inference(batch, model), [label] * len(files)))
    return float(np.mean(hits))


def test_bf16_fidelity_cosine_and_imagenet_top5(tmp_path, images, tf_features, imagenet_head):
    if not cpu_supports_bf16():
        pytest.skip("this CPU has no bf16 support (AVX512_BF16 or AMX): --precision bf16 is refused here")
    featurizer = _featurizer(tmp_path, "bf16")
    assert featurizer.model_id.endswith("/openvino-bf16")
    features = featurizer.run_inference(images, featurizer.load_model())
    cosine = _cosine(features, tf_features)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.98, cosine

    # ImageNet top-5 of the fruits ImageNet knows, with the with-top file's head: bf16 keeps fp32's hit rate (±5 %).
    rates = {precision: imagenet_top5_rate(_featurizer(tmp_path, precision), imagenet_head, 12) for precision in ("fp32", "bf16")}
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


def test_ir_cache_is_per_user_not_per_home(tmp_path, monkeypatch):
    from fruits.model.ir import ir_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ir_cache_dir(make_config(tmp_path / "a")) == tmp_path / "xdg" / "fruits" == ir_cache_dir(make_config(tmp_path / "b"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: a relative path is invalid, ignore it
    assert ir_cache_dir(make_config(tmp_path / "a")) == Path.home() / ".cache" / "fruits"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert ir_cache_dir(make_config(tmp_path / "a")) == Path.home() / ".cache" / "fruits"
    assert ir_cache_dir(make_config(tmp_path, model={"ir_cache": str(tmp_path / "mine")})) == tmp_path / "mine"


def test_calibration_folder_is_checked_and_hashed_by_names_and_bytes(tmp_path):
    from fruits.config import ConfigError
    from fruits.model.quantize import SHIPPED_CALIBRATION, CalibrationSet, calibration_set

    shipped = calibration_set(make_config(tmp_path))
    assert shipped.folder == str(SHIPPED_CALIBRATION) and len(shipped.files) == 131  # one photo per Fruits-360 class
    assert len({Path(f).parent.name for f in shipped.files}) == 131
    assert (SHIPPED_CALIBRATION.parent / "ATTRIBUTION.md").is_file()
    mine = place(sample_files("Kiwi", 3), tmp_path / "photos" / "Kiwi")
    (tmp_path / "photos" / "notes.txt").write_text("not a photo: not part of the set")
    first = calibration_set(make_config(tmp_path, model={"calibration": str(tmp_path / "photos")}))
    assert first.files == tuple(str(p) for p in sorted(mine)) and first.sha256 != shipped.sha256
    mine[0].write_bytes(sample_files("Kiwi", 1, skip=5)[0].read_bytes())  # same names, other bytes: another set
    assert CalibrationSet.from_folder(tmp_path / "photos").sha256 != first.sha256
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .jpg"):
        CalibrationSet.from_folder(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no such folder"):
        CalibrationSet.from_folder(tmp_path / "missing")


@pytest.mark.slow
def test_int8_quantized_on_real_photos_is_cached_and_keeps_fp32_accuracy(tmp_path, weights, images, imagenet_head):
    """Real NNCF quantization of the converted Keras model on the photos shipped in the package: cached per user
    (a second home reuses it), named by weights + calibration set + NNCF version, and within 1 point of fp32's
    ImageNet top-5 on the photos of the fruits ImageNet knows that it was not calibrated on."""
    from fruits.model.quantize import calibration_set, int8_basename, nncf_version

    model = {"precision": "int8", "ir_cache": str(tmp_path / "ir")}
    featurizer = _featurizer_for(tmp_path / "home", **model)
    assert isinstance(featurizer, OpenVinoFeaturizer) and featurizer.model_id == weights.model_id + "/openvino-int8"
    shipped = calibration_set(make_config(tmp_path))
    name = int8_basename(weights, shipped)
    assert featurizer.ir_path == str(tmp_path / "ir" / "openvino" / name / f"{name}.xml")
    assert f"-cal{shipped.sha256[:16]}-nncf{nncf_version()}" in name and all(os.path.isfile(f) for f in featurizer.files)
    assert 'element_type="i8"' in Path(featurizer.ir_path).read_text()  # int8 weights: really quantized
    mtime = os.stat(featurizer.ir_path).st_mtime_ns
    again = _featurizer_for(tmp_path / "another-home", **model)
    assert again.ir_path == featurizer.ir_path and os.stat(again.ir_path).st_mtime_ns == mtime  # cached, not redone
    assert sorted(p.name for p in (tmp_path / "ir" / "openvino").iterdir()) == sorted(
        [name, Path(_featurizer_for(tmp_path / "home", ir_cache=model["ir_cache"]).ir_path).parent.name]
    )  # the fp32 IR it was made from beside it, no temporary folder left behind

    fp32 = _featurizer_for(tmp_path / "home", ir_cache=model["ir_cache"])
    cosine = _cosine(featurizer.run_inference(images, featurizer.load_model()), fp32.run_inference(images, fp32.load_model()))
    assert cosine.mean() >= 0.95, cosine
    calibrated = frozenset(f"{Path(f).parent.name}/{Path(f).name}" for f in shipped.files)
    rates = {h.precision: imagenet_top5_rate(h, imagenet_head, exclude=calibrated) for h in (fp32, featurizer)}
    print(f"ImageNet top-5 on the fruits it knows: {rates}")
    assert rates["fp32"] >= 0.9 and rates["int8"] >= rates["fp32"] - 0.01, rates


def _featurizer_for(home: Path, **model):
    return make_featurizer(make_config(home, model={"runtime": "openvino", **model}), resolve_weights(str(NOTOP_WEIGHTS)))


def test_a_converter_that_dies_raises_instead_of_hanging():
    """The conversion child killed (for memory, a native crash) fails the caller at once; a multiprocessing.Pool
    would restart its worker and wait forever."""
    from concurrent.futures.process import BrokenProcessPool

    from fruits.model.ir import run_in_child

    with pytest.raises(BrokenProcessPool):
        run_in_child(os._exit, 70)
