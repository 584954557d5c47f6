"""The featurizer contract: what the stream, ``fruits identify`` and ``fruits serve`` need from a model runtime.

A :class:`Featurizer` turns decoded images into 1280-d features. It is a small picklable, hashable value (Spark ships
it to Python workers; :func:`shared_model` caches one loaded model per featurizer and process) with four duties, in
the shape of Apache Beam's ``ModelHandler``:

- :attr:`~Featurizer.model_id`: who made the features (weights, runtime, precision, views), recorded on every row;
- :attr:`~Featurizer.files`: the driver-side files the executors need, shipped with ``SparkContext.addFile``;
- :meth:`~Featurizer.load_model`: build the model, once per Python worker;
- :meth:`~Featurizer.run_inference`: ``(n, size, size, 3)`` uint8 RGB -> ``(n, 1280)`` float32.

:class:`ChunkedFeaturizer` is the one shared base of the implementations (TensorFlow in :mod:`fruits.model.keras`,
OpenVINO in :mod:`fruits.model.runtimes`): with :func:`local_file` (a shipped file on a worker) it holds what both share,
the model id and the chunked inference loop, so a runtime only says how to load its model and run one chunk.

Views: with ``views = "rot4"`` a photo's features are the mean of the L2-normalised vectors of the photo turned 0, 90,
180 and 270 degrees (4x the inference), so a fruit photographed turned another way lands nearer its kind
(docs/models.md, "Views"). ``"single"`` is the model's vector of the photo as it is.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from fruits.config import Precision, Runtime, Views
    from fruits.model.weights import WeightsRef

FEATURE_DIM = 1280
# The quarter turns of views = "rot4" (np.rot90's k).
ROT4_TURNS = (0, 1, 2, 3)


@runtime_checkable
class Featurizer(Protocol):
    """What every caller of a model runtime relies on (the stream's UDF, identify, serve, the benches)."""

    @property
    def image_size(self) -> int:
        """Side of the square RGB images the model takes (the decoder resizes to it)."""
        ...

    @property
    def batch_size(self) -> int:
        """Images per model call inside one :meth:`run_inference` call."""
        ...

    @property
    def model_id(self) -> str:
        """``<weights id>/<runtime>-<precision>``, e.g. ``mobilenet_v2_1.0_224/file/sha256:0c30.../openvino-fp32``,
        plus ``+rot4`` for the rot4 views."""
        ...

    @property
    def files(self) -> list[str]:
        """Driver-side files the executors need (shipped with ``SparkContext.addFile``)."""
        ...

    def load_model(self) -> Any:
        """The runnable model; built once per Python worker (:func:`shared_model`)."""
        ...

    def run_inference(self, images: np.ndarray, model: Any) -> np.ndarray:
        """``(n, size, size, 3)`` uint8 RGB images -> ``(n, 1280)`` float32 features."""
        ...


def local_file(driver_path: str) -> str:
    """A file of :attr:`Featurizer.files` on this machine: the driver's path if visible here (local mode, a shared
    filesystem), else the copy ``SparkContext.addFile`` shipped to this executor (SparkFiles' flat folder)."""
    if os.path.isfile(driver_path):
        return driver_path
    from pyspark import SparkFiles

    return SparkFiles.get(os.path.basename(driver_path))


def compose_model_id(weights_id: str, runtime: str, precision: str, views: str = "single") -> str:
    """``<weights id>/<runtime>-<precision>``, plus ``+<views>`` for views other than the single one."""
    return f"{weights_id}/{runtime}-{precision}" + ("" if views == "single" else f"+{views}")


class ChunkedFeaturizer:
    """The shared half of the featurizers: ``model_id`` from ``weights``/``runtime``/``precision``/``views``, and
    ``run_inference`` as a loop over chunks of ``batch_size`` images (of every view). Subclasses are frozen
    dataclasses holding ``weights``, ``image_size``, ``batch_size``, ``precision`` and ``views``, and implement
    :meth:`files`, :meth:`load_model` and :meth:`infer_chunk` (and :meth:`runner` when a model needs per-call state)."""

    weights: "WeightsRef"
    image_size: int
    batch_size: int
    precision: "Precision"
    runtime: "Runtime"
    views: "Views"

    @property
    def model_id(self) -> str:
        """The weights' id plus the runtime and precision that made the features, and the views unless single:
        ``.../openvino-fp32``, ``.../openvino-int8+rot4``. Single-view ids stay as they always were (existing homes
        keep theirs)."""
        return compose_model_id(self.weights.model_id, self.runtime, self.precision, self.views)

    def runner(self, model: Any) -> Any:
        """What :meth:`infer_chunk` calls for one :meth:`run_inference` call (by default the model itself)."""
        return model

    def infer_chunk(self, runner: Any, images: np.ndarray) -> np.ndarray:
        """Features of at most ``batch_size`` uint8 images (preprocessing included)."""
        raise NotImplementedError

    def run_inference(self, images: np.ndarray, model: Any) -> np.ndarray:
        """``(n, size, size, 3)`` uint8 RGB images -> ``(n, 1280)`` float32 features, ``batch_size`` at a time.

        rot4: the model sees the n images turned by each quarter turn (4n images, still ``batch_size`` per call, so
        a call costs what it does for single views); each image's features are the mean of its 4 L2-normalised
        vectors (not normalised again: the mean's length says how much the turns agree)."""
        if len(images) == 0:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        runner = self.runner(model)
        if self.views == "single":
            return self._chunked(runner, images)
        turned = np.concatenate([np.rot90(images, turns, axes=(1, 2)) for turns in ROT4_TURNS])
        vectors = self._chunked(runner, turned).reshape(len(ROT4_TURNS), len(images), -1)
        norms = np.linalg.norm(vectors, axis=2, keepdims=True)
        # an all-zero vector (no activation at all) stays zero rather than becoming NaN
        return (vectors / np.maximum(norms, np.finfo(np.float32).tiny)).mean(axis=0, dtype=np.float32)

    def _chunked(self, runner: Any, images: np.ndarray) -> np.ndarray:
        chunks = [
            np.asarray(self.infer_chunk(runner, images[start : start + self.batch_size]), dtype=np.float32)
            for start in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(chunks)


def mobilenet_v2_preprocess(images: np.ndarray) -> np.ndarray:
    """``keras.applications.mobilenet_v2.preprocess_input`` ("tf" mode) without Keras: ``x / 127.5 - 1`` in float32."""
    batch = images.astype(np.float32)
    batch /= 127.5
    batch -= 1.0
    return batch


_MODELS: dict[Featurizer, Any] = {}  # featurizer (hashable: TensorFlow or a fast runtime) -> its loaded model
_MODELS_LOCK = threading.Lock()
# A model that fails to load (a shipped file not there yet, a full disk for the runtime's cache, ...) is tried again
# in the worker before the task fails, and a failed load is never cached: the next batch tries afresh. Never a
# verdict on an image (fruits.model.udf).
LOAD_ATTEMPTS = 3
LOAD_BACKOFF_SECONDS = 1.0


def shared_model(
    featurizer: Featurizer, *, attempts: int = LOAD_ATTEMPTS, backoff_seconds: float = LOAD_BACKOFF_SECONDS
) -> Any:
    """The model for ``featurizer``, loaded once per process and reused by every later batch and micro-batch.

    A load that raises is tried up to ``attempts`` times (waiting ``backoff_seconds`` x attempt in between); the last
    error is raised, and nothing is cached, so a later call tries again."""
    with _MODELS_LOCK:
        if featurizer not in _MODELS:
            started = time.perf_counter()
            for attempt in range(1, attempts + 1):
                try:
                    model = featurizer.load_model()
                    break
                except Exception as exc:
                    if attempt == attempts:
                        raise
                    print(
                        f"fruits: worker pid {os.getpid()} could not build {featurizer.model_id} "
                        f"(attempt {attempt} of {attempts}: {type(exc).__name__}: {exc}); retrying",
                        file=sys.stderr,
                        flush=True,
                    )
                    time.sleep(backoff_seconds * attempt)
            _MODELS[featurizer] = model
            # Python workers have no logging set up; stderr reaches the executor's log.
            print(
                f"fruits: worker pid {os.getpid()} built {featurizer.model_id} in {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        return _MODELS[featurizer]
