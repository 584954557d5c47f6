"""``[model] views``: "single" (the photo as it is) and "rot4" (the mean of the L2-normalised vectors of its 4
quarter turns), their model ids and which features may be compared (fruits.model.featurizer, fruits.model.runtimes)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import NOTOP_WEIGHTS, SAMPLE, make_config, sample_files
from fruits.config import ConfigError, allowed_values, load_config
from fruits.model.keras import KerasFeaturizer
from fruits.model.runtimes import OpenVinoFeaturizer, make_featurizer, same_features
from fruits.model.weights import WeightsRef

# A weights reference for the model ids alone: no file is read by these fast tests.
FAKE_WEIGHTS = WeightsRef("/nowhere/mobilenet.weights.h5", "0c307d1bb5e7222e" + "0" * 48, False, "file")
PREFIX = FAKE_WEIGHTS.model_id


@pytest.mark.fast
def test_model_id_names_the_views_only_when_not_single():
    assert KerasFeaturizer(FAKE_WEIGHTS).model_id == PREFIX + "/tensorflow-fp32"  # existing homes keep their ids
    assert KerasFeaturizer(FAKE_WEIGHTS, views="rot4").model_id == PREFIX + "/tensorflow-fp32+rot4"
    assert OpenVinoFeaturizer(FAKE_WEIGHTS, "/nowhere.xml", "int8").model_id == PREFIX + "/openvino-int8"
    assert OpenVinoFeaturizer(FAKE_WEIGHTS, "/nowhere.xml", "int8", views="rot4").model_id == PREFIX + "/openvino-int8+rot4"
    # the views are part of the featurizer's identity: a worker's cached model is not shared across views
    assert OpenVinoFeaturizer(FAKE_WEIGHTS, "/x.xml") != OpenVinoFeaturizer(FAKE_WEIGHTS, "/x.xml", views="rot4")


@pytest.mark.fast
def test_make_featurizer_takes_the_views_from_the_config(tmp_path):
    config = load_config(overrides={"paths": {"home": str(tmp_path)}, "model": {"runtime": "tensorflow"}}, environ={})
    assert config.model.views == "single"  # the shipped default
    assert make_featurizer(config, FAKE_WEIGHTS).model_id == PREFIX + "/tensorflow-fp32"
    rot4 = load_config(overrides={"model": {"runtime": "tensorflow"}}, environ={"FRUITS_VIEWS": "rot4"})
    featurizer = make_featurizer(rot4, FAKE_WEIGHTS)
    assert featurizer.views == "rot4" and featurizer.model_id == PREFIX + "/tensorflow-fp32+rot4"
    with pytest.raises(ConfigError, match="FRUITS_VIEWS"):
        load_config(environ={"FRUITS_VIEWS": "rot8"})


@pytest.mark.fast
def test_views_flag_reaches_the_config():
    from fruits.cli import build_parser, config_from_args

    for command, extra in (("stream", []), ("identify", ["photo.jpg"]), ("serve", [])):
        args = build_parser().parse_args([command, *extra, "--views", "rot4"])
        assert config_from_args(args).model.views == "rot4"
        assert config_from_args(build_parser().parse_args([command, *extra])).model.views == "single"
        views = next(a for a in build_parser()._subparsers._group_actions[0].choices[command]._actions  # noqa: SLF001
                     if a.dest == "views")
        assert tuple(views.choices) == allowed_values("model", "views") == ("single", "rot4")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stream", "--views", "rot8"])


@pytest.mark.fast
def test_same_features_compares_the_views():
    assert same_features(PREFIX + "/openvino-fp32+rot4", PREFIX + "/tensorflow-fp32+rot4")  # fp32 runtimes: same
    assert same_features(PREFIX + "/openvino-int8+rot4", PREFIX + "/openvino-int8+rot4")
    assert not same_features(PREFIX + "/openvino-fp32+rot4", PREFIX + "/openvino-fp32")
    assert not same_features(PREFIX + "/openvino-fp32+rot4", PREFIX)  # rows before runtimes: single view
    assert not same_features(PREFIX + "/openvino-int8+rot4", PREFIX + "/openvino-fp32+rot4")
    assert same_features(PREFIX + "/openvino-fp32", PREFIX)
    other = WeightsRef("/b.h5", "f" * 64, False, "file").model_id
    assert not same_features(PREFIX + "/openvino-fp32+rot4", other + "/openvino-fp32+rot4")


def _photos() -> np.ndarray:
    """6 real photos of 3 classes (one of each recording) of the shared sample, as the stream decodes them."""
    from fruits.model.images import decode_image

    files = [f for label in ("Banana", "Kiwi", "Pear") for f in (sample_files(label, 1)[0], sorted((SAMPLE / label).glob("r_*.jpg"))[0])]
    return np.stack([decode_image(p.read_bytes()) for p in files])


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_rot4_features_are_the_mean_of_the_turned_photos_and_turning_free(tmp_path):
    """The real model (OpenVINO fp32) on real photos: rot4 is the mean of the 4 quarter turns' unit vectors, so a photo
    turned 90 degrees gets the same features; single is the plain model output, which turning changes."""
    images = _photos()
    config = make_config(tmp_path, model={"runtime": "openvino", "precision": "fp32"})
    single = make_featurizer(config, load_weights())
    rot4 = make_featurizer(make_config(tmp_path, model={"runtime": "openvino", "views": "rot4"}), load_weights())
    assert single.views == "single" and rot4.views == "rot4" and rot4.model_id == single.model_id + "+rot4"
    model = single.load_model()

    # single: exactly the chunk-by-chunk model output of before views existed (bit for bit), odd chunk sizes included
    plain = single.run_inference(images, model)
    runner = single.runner(model)
    before = np.concatenate([single.infer_chunk(runner, images[i : i + single.batch_size]) for i in range(0, len(images), single.batch_size)])
    assert plain.dtype == np.float32 and plain.shape == (6, 1280) and np.array_equal(plain, before)

    features = rot4.run_inference(images, model)  # same weights and IR: the compiled model is the same
    assert features.dtype == np.float32 and features.shape == (6, 1280)
    turned = [single.run_inference(np.rot90(images, k, axes=(1, 2)).copy(), model) for k in range(4)]
    assert np.allclose(features, np.mean([_unit(t) for t in turned], axis=0), atol=1e-5)
    assert np.allclose(features, rot4.run_inference(np.rot90(images, 1, axes=(1, 2)).copy(), model), atol=1e-5)
    assert np.allclose(features[2:3], rot4.run_inference(np.rot90(images[2:3], 3, axes=(1, 2)).copy(), model), atol=1e-5)
    # ... where single-view features of the turned photo differ: the property above is the averaging's doing
    cosine = np.sum(_unit(plain) * _unit(turned[1]), axis=1)
    assert cosine.max() < 0.99, cosine
    assert 0 < np.linalg.norm(features, axis=1).max() <= 1 + 1e-6  # a mean of unit vectors
    assert rot4.run_inference(images[:0], model).shape == (0, 1280)


def load_weights():
    from fruits.model.weights import resolve_weights

    return resolve_weights(str(NOTOP_WEIGHTS))
