"""Fast CPU runtimes for the MobileNetV2 featurizer, converted from the Keras model (which stays the source of truth).

The default runtime is OpenVINO: on this project's 2-core machine it ran MobileNetV2 about 2x faster than
TensorFlow in fp32 with features equal to Keras' within 1e-5 (see ``bench/bare_model.py`` and the README's
Performance section), imports in a fraction of a second, holds a fraction of TensorFlow's memory, and the same
runtime offers an opt-in bf16 mode on CPUs that have bf16 instructions.

- :func:`convert_once` (driver side) converts the Keras model to OpenVINO IR once per weights file and caches it,
  keyed by the weights' sha256, under the home's ``paths.cache`` folder. Only its child process imports TensorFlow.
- :class:`OpenVinoHandler` has the two duties of :class:`fruits.model.MobileNetV2Handler` (``load_model`` /
  ``run_inference``) and never imports TensorFlow: Python workers of the stream load only OpenVINO.
- :func:`make_handler` is the one factory the stream and ``fruits identify`` use, so both make the same model id.

Every row's ``model_id`` is ``<weights id>/<runtime>-<precision>``, e.g.
``mobilenet_v2_1.0_224/file/sha256:0c307d1bb5e7222e/openvino-fp32``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fruits.config import Config, ConfigError
from fruits.model import ARCHITECTURE, FEATURE_DIM, MobileNetV2Handler, WeightsRef

log = logging.getLogger("fruits.runtimes")

RUNTIMES = ("openvino", "tensorflow")
PRECISIONS = ("fp32", "bf16")
# OpenVINO's name for each precision (INFERENCE_PRECISION_HINT).
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def ir_basename(weights: WeightsRef, image_size: int = 224) -> str:
    """File name (without extension) of the IR converted from ``weights``: unique per weights file, so the .xml and
    .bin of several weights can sit side by side in SparkFiles' flat folder."""
    return f"{ARCHITECTURE.replace('_224', '')}_{image_size}-{weights.sha256[:32]}"


def local_cache_dir(config: Config) -> Path:
    """The home's ``paths.cache`` folder when it is local; for a remote home (hdfs://, s3a://) a local per-user cache,
    since OpenVINO reads IR from local files (executors get their copy through ``SparkContext.addFile``)."""
    cache = config.cache
    if cache.startswith("file:"):
        cache = re.sub(r"^file:(//)?", "", cache)
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", cache):
        return Path.home() / ".cache" / "fruits"
    return Path(cache)


def convert_once(weights: WeightsRef, cache_dir: str | os.PathLike[str], image_size: int = 224) -> str:
    """The path of the OpenVINO IR (.xml; its .bin beside it) of the Keras model built with ``weights``.

    Converted with TensorFlow, in a child process, only if not cached yet under ``cache_dir/openvino/``; written to a
    temporary folder and renamed into place, so a reader never sees half an IR, and concurrent converters do not clash.
    """
    folder = Path(cache_dir) / "openvino"
    name = ir_basename(weights, image_size)
    xml = folder / name / f"{name}.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return str(xml)
    folder.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to OpenVINO IR under %s (once per weights file)", weights.model_id, folder)
    # In a child process: TensorFlow (~0.7 GB) must not stay resident in the long-running stream's driver.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(_convert, (weights, str(folder), name, image_size))
    return str(xml)


def _convert(weights: WeightsRef, folder: str, name: str, image_size: int) -> None:
    """Convert and save the IR as ``folder/name/name.xml`` (temporary folder, then rename)."""
    import openvino as ov

    from fruits.model import build_keras_model

    keras_model = build_keras_model(weights.path, weights.has_top, image_size)
    with warnings.catch_warnings():  # Keras warns that the traced input is a tuple: harmless here
        warnings.simplefilter("ignore", UserWarning)
        ov_model = ov.convert_model(keras_model, input=[-1, image_size, image_size, 3])  # dynamic batch
    temporary = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
    try:
        ov.save_model(ov_model, str(temporary / f"{name}.xml"), compress_to_fp16=False)  # keep fp32 weights
        try:
            os.rename(temporary, Path(folder) / name)
        except OSError:  # another process got there first: use its (identical) IR
            if not (Path(folder) / name / f"{name}.xml").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (AVX512_BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@dataclass(frozen=True)
class OpenVinoHandler:
    """MobileNetV2 features with OpenVINO from a cached IR; picklable and hashable (see :func:`shared_model`)."""

    weights: WeightsRef
    ir_path: str  # the .xml on the driver; its .bin sits beside it
    precision: str = "fp32"
    image_size: int = 224
    batch_size: int = 8
    threads: int = 1  # inference threads per Python worker (Spark runs one worker per task slot); 0: OpenVINO's choice
    cpu_pinning: bool = False  # OpenVINO's default (True) puts every worker's thread on the same core: see load_model

    runtime = "openvino"

    @property
    def model_id(self) -> str:
        return f"{self.weights.model_id}/{self.runtime}-{self.precision}"

    @property
    def files(self) -> list[str]:
        """Driver-side files the executors need (shipped with ``SparkContext.addFile``)."""
        return [self.ir_path, str(Path(self.ir_path).with_suffix(".bin"))]

    def _ir_file(self) -> str:
        """The IR on this machine: the driver's path if visible here, else the copy shipped by addFile."""
        if os.path.isfile(self.ir_path) and os.path.isfile(self.files[1]):
            return self.ir_path
        from pyspark import SparkFiles

        return SparkFiles.get(os.path.basename(self.ir_path))

    def load_model(self) -> Any:
        """The compiled OpenVINO model. Imports OpenVINO only, never TensorFlow."""
        import openvino as ov

        core = ov.Core()
        if self.precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise RuntimeError("--precision bf16: this CPU has no bf16 support (AVX512_BF16 or AMX); use fp32")
        settings: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # OpenVINO pins its threads to cores by default. Spark runs one Python worker per task slot, each with
            # its own 1-thread model: pinned, they all landed on the same core and ran at half the speed
            # (bench/bare_model.py, 2 processes x 1 thread on 2 cores: 214.7 images/s pinned, 452.2 unpinned).
            "ENABLE_CPU_PINNING": self.cpu_pinning,
        }
        if self.threads:
            settings["INFERENCE_NUM_THREADS"] = int(self.threads)
        return core.compile_model(core.read_model(self._ir_file()), "CPU", settings)

    def run_inference(self, images: np.ndarray, model: Any) -> np.ndarray:
        """``(n, size, size, 3)`` uint8 RGB images -> ``(n, 1280)`` float32 features, ``batch_size`` at a time."""
        if len(images) == 0:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        request = model.create_infer_request()  # cheap; one per Arrow batch
        chunks = []
        for start in range(0, len(images), self.batch_size):
            # keras.applications.mobilenet_v2.preprocess_input ("tf" mode): x / 127.5 - 1, in float32.
            batch = images[start : start + self.batch_size].astype(np.float32)
            batch /= 127.5
            batch -= 1.0
            chunks.append(np.asarray(request.infer([batch])[0], dtype=np.float32))  # outputs are copies
        return np.concatenate(chunks)


def make_handler(config: Config, weights: WeightsRef, threads: int | None = None) -> Any:
    """The featurizer ``config`` asks for (``[model] runtime`` and ``precision``): the one factory of the stream and
    ``fruits identify``, so both give the same model id. Converts (once) on the driver when the runtime needs it."""
    model_cfg = config.model
    runtime, precision = model_cfg.runtime, model_cfg.precision
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime}: unknown runtime; use one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision}: unknown precision; use one of {', '.join(PRECISIONS)}")
    image_size = model_cfg.image_size
    batch_size = model_cfg.inference_batch_size
    threads = model_cfg.intra_op_threads if threads is None else threads
    if runtime == "tensorflow":
        if precision != "fp32":
            raise ConfigError("--precision bf16 needs --runtime openvino; the TensorFlow runtime runs fp32 only")
        return MobileNetV2Handler(weights, image_size=image_size, batch_size=batch_size, intra_op_threads=threads)
    if precision == "bf16" and not cpu_supports_bf16():
        raise ConfigError("--precision bf16: this CPU has no bf16 support (AVX512_BF16 or AMX); use --precision fp32")
    ir_path = convert_once(weights, local_cache_dir(config), image_size)
    return OpenVinoHandler(weights, ir_path, precision, image_size=image_size, batch_size=batch_size, threads=threads)


def same_features(model_id: str, other: str) -> bool:
    """Whether features of two model ids can be compared: same weights and same precision. fp32 runtimes are
    interchangeable (OpenVINO's features equal TensorFlow's within 1e-4, a tested property); ids without a
    runtime suffix (rows written before runtimes were recorded) are TensorFlow fp32."""

    def split(identifier: str) -> tuple[str, str]:
        match = re.fullmatch(r"(.*)/(?:[a-z]+)-(fp32|bf16)", identifier)
        return (match.group(1), match.group(2)) if match else (identifier, "fp32")

    return split(model_id) == split(other)
