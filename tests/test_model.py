"""The weights options: with or without the ImageNet head, both give the same 1280-d features (real TensorFlow)."""

from __future__ import annotations

import numpy as np

from conftest import NOTOP_WEIGHTS, TOP_WEIGHTS, sample_files
from fruits.model.images import decode_image
from fruits.model.keras import KerasFeaturizer
from fruits.model.weights import resolve_weights, weights_have_top


def test_weights_files_are_told_apart_and_identified_by_content():
    notop, top = resolve_weights(str(NOTOP_WEIGHTS)), resolve_weights(str(TOP_WEIGHTS))
    assert (notop.has_top, top.has_top) == (False, True)
    assert weights_have_top(str(TOP_WEIGHTS)) and not weights_have_top(str(NOTOP_WEIGHTS))
    assert notop.model_id == "mobilenet_v2_1.0_224/file/sha256:0c307d1bb5e7222e"
    assert top.model_id == "mobilenet_v2_1.0_224/file/sha256:0c5f5bc50d19e13d"


def test_with_and_without_top_weights_give_the_same_features():
    images = np.stack([decode_image(p.read_bytes()) for p in sample_files("Strawberry", 5)])
    results = []
    for path in (NOTOP_WEIGHTS, TOP_WEIGHTS):
        featurizer = KerasFeaturizer(resolve_weights(str(path)), batch_size=2)  # 5 images: chunks of 2, 2, 1
        results.append(featurizer.run_inference(images, featurizer.load_model()))
    assert results[0].shape == (5, 1280) and results[0].dtype == np.float32
    assert np.abs(results[0] - results[1]).max() <= 1e-5
