"""MobileNetV2 feature extraction with TensorFlow: the Keras model, source of truth of every runtime.

:class:`KerasFeaturizer` is the TensorFlow :class:`~fruits.model.featurizer.Featurizer`: ``load_model`` builds the model
(once per Python worker, see :func:`shared_model`) and ``run_inference`` turns a batch of decoded images into 1280-d
features. Which weights made a feature is recorded as :attr:`WeightsRef.model_id` on every row.

The weights themselves are resolved in :mod:`fruits.model.weights`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fruits.model.featurizer import ChunkedFeaturizer, local_file, mobilenet_v2_preprocess
from fruits.model.weights import WeightsRef

if TYPE_CHECKING:
    from fruits.config import Views

def build_keras_model(weights_file: str, has_top: bool, image_size: int = 224) -> Any:
    """The Keras feature extractor (the source of truth): backbone + global average pooling = the full model's
    ``layers[-2]``, 1280 floats per image. Other runtimes are converted from this model."""
    import tensorflow as tf

    shape = (image_size, image_size, 3)
    apps = tf.keras.applications
    if has_top:
        full = apps.MobileNetV2(weights=None, include_top=True, input_shape=shape)
        full.load_weights(weights_file)
        return tf.keras.Model(full.inputs, full.layers[-2].output)
    model = apps.MobileNetV2(weights=None, include_top=False, pooling="avg", input_shape=shape)
    model.load_weights(weights_file)
    return model


@dataclass(frozen=True)
class KerasFeaturizer(ChunkedFeaturizer):
    """Builds MobileNetV2 feature extractors with TensorFlow and runs them: a :class:`~fruits.model.featurizer.Featurizer`;
    picklable, so Spark ships it to Python workers."""

    weights: WeightsRef
    image_size: int = 224
    batch_size: int = 32
    intra_op_threads: int = 1
    views: "Views" = "single"  # see fruits.model.featurizer: "rot4" averages the 4 quarter turns

    runtime = "tensorflow"
    precision = "fp32"

    @property
    def files(self) -> list[str]:
        """Driver-side files the executors need (shipped with ``SparkContext.addFile``)."""
        return [self.weights.path]

    def load_model(self) -> Any:
        """MobileNetV2 backbone + global average pooling: the full model's ``layers[-2]`` (1280 floats)."""
        import tensorflow as tf

        if self.intra_op_threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(int(self.intra_op_threads))
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # TensorFlow already initialised in this process: keep its setting
                pass
        model = build_keras_model(local_file(self.weights.path), self.weights.has_top, self.image_size)
        return tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def infer_chunk(self, runner: Any, images: np.ndarray) -> np.ndarray:
        """Features of one chunk: Keras' MobileNetV2 preprocessing, then the model."""
        return np.asarray(runner(mobilenet_v2_preprocess(images)), dtype=np.float32)
