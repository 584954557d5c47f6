"""Fast CPU runtimes for the MobileNetV2 featurizer, converted from the Keras model (which stays the source of truth).

The default runtime is OpenVINO: on this project's 2-core machine it runs MobileNetV2 faster than TensorFlow in fp32
with features equal to Keras' within 1e-4 (``bench/bare_model.py``), imports in a fraction of a second, holds a
fraction of TensorFlow's memory, and offers opt-in precisions: bf16 on CPUs that have bf16 instructions, and int8
(the IR quantized with NNCF, :mod:`fruits.model.quantize`; ``bench/int8.py``).

- :func:`fruits.model.ir.convert_once` (driver side) converts the Keras model to OpenVINO IR once per weights file
  and caches it per user (so a new home does not convert again). Only its child process imports TensorFlow.
- :class:`OpenVinoFeaturizer` is a :class:`~fruits.model.featurizer.Featurizer` like
  :class:`fruits.model.keras.KerasFeaturizer` and never imports TensorFlow: Python workers of the stream load only
  OpenVINO.
- :func:`make_featurizer` is the one factory the stream and ``fruits identify`` use, so both make the same model id.

Every row's ``model_id`` is ``<weights id>/<runtime>-<precision>``, e.g.
``mobilenet_v2_1.0_224/file/sha256:0c307d1bb5e7222e/openvino-fp32``, plus ``+rot4`` for the rot4 views
(``.../openvino-fp32+rot4``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np

from fruits.config import Config, ConfigError, Precision, Runtime, Views
from fruits.model.featurizer import ChunkedFeaturizer, Featurizer, local_file, mobilenet_v2_preprocess
from fruits.model.ir import convert_once, ir_cache_dir
from fruits.model.keras import KerasFeaturizer
from fruits.model.weights import WeightsRef

log = logging.getLogger("fruits.model.runtimes")

RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
# OpenVINO's INFERENCE_PRECISION_HINT for each precision. int8 is in the quantized IR itself (fruits.model.quantize): its
# quantized operations run in int8, the others in fp32.
_OV_PRECISION: dict[Precision, str] = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (AVX512_BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@dataclass(frozen=True)
class OpenVinoFeaturizer(ChunkedFeaturizer):
    """MobileNetV2 features with OpenVINO from a cached IR: a :class:`~fruits.model.featurizer.Featurizer`; picklable and
    hashable (see :func:`fruits.model.featurizer.shared_model`)."""

    weights: WeightsRef
    ir_path: str  # the .xml on the driver; its .bin sits beside it
    precision: Precision = "fp32"
    image_size: int = 224
    batch_size: int = 8
    threads: int = 1  # inference threads per Python worker (Spark runs one worker per task slot); 0: OpenVINO's choice
    cpu_pinning: bool = False  # OpenVINO's default (True) puts every worker's thread on the same core: see load_model
    views: Views = "single"  # see fruits.model.featurizer: "rot4" averages the 4 quarter turns

    runtime = "openvino"

    @property
    def files(self) -> list[str]:
        """Driver-side files the executors need (shipped with ``SparkContext.addFile``): the IR's .xml and .bin."""
        return [self.ir_path, str(Path(self.ir_path).with_suffix(".bin"))]

    def load_model(self) -> Any:
        """The compiled OpenVINO model. Imports OpenVINO only, never TensorFlow."""
        import openvino as ov

        core = ov.Core()
        if self.precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise ConfigError("--precision bf16: this CPU has no bf16 support (AVX512_BF16 or AMX); use fp32")
        settings: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # OpenVINO pins its threads to cores by default. Spark runs one Python worker per task slot, each with
            # its own 1-thread model: pinned, they all land on the same core and share it while the other cores idle
            # (bench/bare_model.py: 2 processes x 1 thread on 2 cores, pinned against unpinned; docs/performance.md).
            "ENABLE_CPU_PINNING": self.cpu_pinning,
        }
        if self.threads:
            settings["INFERENCE_NUM_THREADS"] = int(self.threads)
        # On an executor, SparkFiles holds the .bin beside the .xml (addFile puts both in the same flat folder).
        return core.compile_model(core.read_model(local_file(self.ir_path)), "CPU", settings)

    def runner(self, model: Any) -> Any:
        """One inference request per :meth:`run_inference` call (cheap; thread-safe use of a shared model)."""
        return model.create_infer_request()

    def infer_chunk(self, runner: Any, images: np.ndarray) -> np.ndarray:
        """Features of one chunk: Keras' MobileNetV2 preprocessing, then the compiled model (outputs are copies)."""
        return np.asarray(runner.infer([mobilenet_v2_preprocess(images)])[0], dtype=np.float32)


def make_featurizer(config: Config, weights: WeightsRef, *, threads: int | None = None) -> Featurizer:
    """The featurizer ``config`` asks for (``[model] runtime``, ``precision`` and ``views``): the one factory of the stream and
    ``fruits identify``, so both give the same model id. Converts (and, for int8, quantizes) once on the driver when
    the runtime needs it; the IR is cached per user (:func:`ir_cache_dir`).

    >>> featurizer = make_featurizer(load_config(environ={}), resolve_weights("imagenet"))
    >>> featurizer.model_id
    'mobilenet_v2_1.0_224/imagenet/sha256:.../openvino-fp32'
    >>> features = featurizer.run_inference(images, featurizer.load_model())  # (n, 224, 224, 3) uint8 -> (n, 1280)
    """
    model_cfg = config.model
    runtime, precision = check_runtime(model_cfg.runtime, model_cfg.precision)
    image_size, batch_size = model_cfg.image_size, model_cfg.inference_batch_size
    threads = model_cfg.intra_op_threads if threads is None else threads
    views = model_cfg.views
    if runtime == "tensorflow":
        return KerasFeaturizer(weights, image_size=image_size, batch_size=batch_size, intra_op_threads=threads, views=views)
    if precision == "int8":
        from fruits.model.quantize import calibration_set, quantize_once

        ir_path = quantize_once(weights, calibration_set(config), ir_cache_dir(config), image_size)
    else:
        ir_path = convert_once(weights, ir_cache_dir(config), image_size)
    return OpenVinoFeaturizer(
        weights, ir_path, precision, image_size=image_size, batch_size=batch_size, threads=threads, views=views
    )


class PrecisionUnresolved(ConfigError):
    """``precision = "auto"`` reached a featurizer: auto is chosen once per home
    (:func:`fruits.model.accuracy.choose_precision`) and the recorded precision is what a featurizer is made with."""


def check_runtime(runtime: str, precision: str) -> tuple[Runtime, Precision]:
    """``(runtime, precision)`` if this machine can run them, else a :class:`ConfigError` saying what to use."""
    if precision == "auto":
        raise PrecisionUnresolved(
            "precision auto is chosen once per home (fruits.model.accuracy.choose_precision) and recorded there; a "
            "featurizer is made with the precision it chose (fp32, bf16 or int8), never with auto itself"
        )
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime}: unknown runtime; use one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision}: unknown precision; use one of {', '.join(PRECISIONS)}")
    if runtime == "tensorflow" and precision != "fp32":
        raise ConfigError(f"--precision {precision} needs --runtime openvino; the TensorFlow runtime runs fp32 only")
    if precision == "bf16" and not cpu_supports_bf16():
        raise ConfigError("--precision bf16: this CPU has no bf16 support (AVX512_BF16 or AMX); use --precision fp32")
    if precision == "int8":
        from fruits.model.quantize import nncf_version

        nncf_version()  # NNCF installed, or a ConfigError saying how to install it
    return cast(Runtime, runtime), cast(Precision, precision)


VIEWS: tuple[Views, ...] = get_args(Views)
_MODEL_ID = re.compile(
    rf"(.*)/(?:[a-z]+)-({'|'.join(PRECISIONS)})(?:\+({'|'.join(v for v in VIEWS if v != 'single')}))?"
)


def same_features(model_id: str, other: str) -> bool:
    """Whether features of two model ids can be compared: same weights, same precision and same views. fp32
    runtimes are interchangeable (OpenVINO's features equal TensorFlow's within 1e-4, a tested property); ids without
    a runtime suffix (rows written before runtimes were recorded) are TensorFlow fp32, single view."""

    def split(identifier: str) -> tuple[str, str, str]:
        match = _MODEL_ID.fullmatch(identifier)
        if match is None:
            return identifier, "fp32", "single"
        return match.group(1), match.group(2), match.group(3) or "single"

    return split(model_id) == split(other)
