"""Fast CPU runtimes for the MobileNetV2 featurizer, converted from the Keras model (which stays the source of truth).

The default runtime is OpenVINO: on this project's 2-core machine it runs MobileNetV2 faster than TensorFlow in fp32
with features equal to Keras' within 1e-4 (``bench/bare_model.py``), imports in a fraction of a second, holds a
fraction of TensorFlow's memory, and offers opt-in precisions: bf16 on CPUs that have bf16 instructions, and int8
(the IR quantized with NNCF, :mod:`fruits.quantize`; ``bench/int8.py``).

- :func:`convert_once` (driver side) converts the Keras model to OpenVINO IR once per weights file and caches it,
  keyed by the weights' sha256, in the per-user :func:`ir_cache_dir` (so a new home does not convert again). Only
  its child process imports TensorFlow.
- :class:`OpenVinoHandler` is a :class:`~fruits.featurizer.Featurizer` like :class:`fruits.model.MobileNetV2Handler`
  and never imports TensorFlow: Python workers of the stream load only OpenVINO.
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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fruits.config import Config, ConfigError, allowed_values
from fruits.uris import local_path
from fruits.featurizer import ChunkedFeaturizer, Featurizer, local_file, mobilenet_v2_preprocess
from fruits.model import ARCHITECTURE, MobileNetV2Handler, WeightsRef

log = logging.getLogger("fruits.runtimes")

RUNTIMES = allowed_values("model", "runtime")
PRECISIONS = allowed_values("model", "precision")
# OpenVINO's INFERENCE_PRECISION_HINT for each precision. int8 is in the quantized IR itself (fruits.quantize): its
# quantized operations run in int8, the others in fp32.
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def ir_basename(weights: WeightsRef, image_size: int = 224) -> str:
    """File name (without extension) of the IR converted from ``weights``: unique per weights file, so the .xml and
    .bin of several weights can sit side by side in SparkFiles' flat folder."""
    return f"{ARCHITECTURE.replace('_224', '')}_{image_size}-{weights.sha256[:32]}"


def ir_cache_dir(config: Config) -> Path:
    """Where converted (and quantized) IR is cached, per user rather than per home, so a new home does not pay the
    conversion again: ``[model] ir_cache`` if set, else ``$XDG_CACHE_HOME/fruits``, else ``~/.cache/fruits``.
    Always a local folder on the driver: OpenVINO reads IR from local files, and executors get their copy through
    ``SparkContext.addFile`` (the handler's ``files``)."""
    configured = config.model.ir_cache
    if configured:
        folder = local_path(configured)
        if folder is None:
            raise ConfigError(f"[model] ir_cache = {configured!r}: must be a local folder (OpenVINO reads local files)")
        return Path(folder).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "fruits"


def convert_once(weights: WeightsRef, cache_dir: str | os.PathLike[str], image_size: int = 224) -> str:
    """The path of the OpenVINO IR (.xml; its .bin beside it) of the Keras model built with ``weights``.

    Converted with TensorFlow, in a child process, only if not cached yet under ``cache_dir/openvino/``; written to a
    temporary folder and renamed into place (:func:`save_atomically`), so a reader never sees half an IR, and
    concurrent converters (two homes' streams starting at once) do not clash.
    """
    folder = Path(cache_dir) / "openvino"
    name = ir_basename(weights, image_size)
    xml = folder / name / f"{name}.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return str(xml)
    folder.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to OpenVINO IR under %s (once per weights file)", weights.model_id, folder)
    # In a child process: TensorFlow (~0.7 GB) must not stay resident in the long-running stream's driver.
    run_in_child(_convert, weights, str(folder), name, image_size)
    return str(xml)


def run_in_child(function: Callable[..., None], *args: Any) -> None:
    """``function(*args)`` in a fresh (spawned) process, waited for; its exception is raised here, and a child that
    dies (killed for memory, a native crash) raises ``BrokenProcessPool`` instead of hanging the caller."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(function, *args).result()


def _convert(weights: WeightsRef, folder: str, name: str, image_size: int) -> None:
    """Convert and save the IR as ``folder/name/name.xml``."""
    import openvino as ov

    from fruits.model import build_keras_model

    keras_model = build_keras_model(weights.path, weights.has_top, image_size)
    with warnings.catch_warnings():  # Keras warns that the traced input is a tuple: harmless here
        warnings.simplefilter("ignore", UserWarning)
        ov_model = ov.convert_model(keras_model, input=[-1, image_size, image_size, 3])  # dynamic batch
    save_atomically(ov_model, folder, name)


def save_atomically(ov_model: Any, folder: str | os.PathLike[str], name: str) -> str:
    """Save ``ov_model`` as ``folder/name/name.xml`` (+ .bin, fp32 weights kept) through a temporary folder renamed
    into place: readers see the whole IR or none. If another process renamed its (identical) IR first, keep that."""
    import openvino as ov

    temporary = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
    final = Path(folder) / name
    try:
        ov.save_model(ov_model, str(temporary / f"{name}.xml"), compress_to_fp16=False)
        try:
            os.rename(temporary, final)
        except OSError:  # another process got there first: use its IR
            if not (final / f"{name}.xml").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return str(final / f"{name}.xml")


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (AVX512_BF16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@dataclass(frozen=True)
class OpenVinoHandler(ChunkedFeaturizer):
    """MobileNetV2 features with OpenVINO from a cached IR: a :class:`~fruits.featurizer.Featurizer`; picklable and
    hashable (see :func:`fruits.featurizer.shared_model`)."""

    weights: WeightsRef
    ir_path: str  # the .xml on the driver; its .bin sits beside it
    precision: str = "fp32"
    image_size: int = 224
    batch_size: int = 8
    threads: int = 1  # inference threads per Python worker (Spark runs one worker per task slot); 0: OpenVINO's choice
    cpu_pinning: bool = False  # OpenVINO's default (True) puts every worker's thread on the same core: see load_model

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
            raise RuntimeError("--precision bf16: this CPU has no bf16 support (AVX512_BF16 or AMX); use fp32")
        settings: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # OpenVINO pins its threads to cores by default. Spark runs one Python worker per task slot, each with
            # its own 1-thread model: pinned, they all landed on the same core and ran at half the speed
            # (bench/bare_model.py, 2 processes x 1 thread on 2 cores, pinned against unpinned).
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


def make_handler(config: Config, weights: WeightsRef, threads: int | None = None) -> Featurizer:
    """The featurizer ``config`` asks for (``[model] runtime`` and ``precision``): the one factory of the stream and
    ``fruits identify``, so both give the same model id. Converts (and, for int8, quantizes) once on the driver when
    the runtime needs it; the IR is cached per user (:func:`ir_cache_dir`)."""
    model_cfg = config.model
    runtime, precision = check_runtime(model_cfg.runtime, model_cfg.precision)
    image_size, batch_size = model_cfg.image_size, model_cfg.inference_batch_size
    threads = model_cfg.intra_op_threads if threads is None else threads
    if runtime == "tensorflow":
        return MobileNetV2Handler(weights, image_size=image_size, batch_size=batch_size, intra_op_threads=threads)
    if precision == "int8":
        from fruits.quantize import calibration_set, quantize_once

        ir_path = quantize_once(weights, calibration_set(config), ir_cache_dir(config), image_size)
    else:
        ir_path = convert_once(weights, ir_cache_dir(config), image_size)
    return OpenVinoHandler(weights, ir_path, precision, image_size=image_size, batch_size=batch_size, threads=threads)


def check_runtime(runtime: str, precision: str) -> tuple[str, str]:
    """``(runtime, precision)`` if this machine can run them, else a :class:`ConfigError` saying what to use."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime}: unknown runtime; use one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision}: unknown precision; use one of {', '.join(PRECISIONS)}")
    if runtime == "tensorflow" and precision != "fp32":
        raise ConfigError(f"--precision {precision} needs --runtime openvino; the TensorFlow runtime runs fp32 only")
    if precision == "bf16" and not cpu_supports_bf16():
        raise ConfigError("--precision bf16: this CPU has no bf16 support (AVX512_BF16 or AMX); use --precision fp32")
    if precision == "int8":
        from fruits.quantize import nncf_version

        nncf_version()  # NNCF installed, or a ConfigError saying how to install it
    return runtime, precision


def same_features(model_id: str, other: str) -> bool:
    """Whether features of two model ids can be compared: same weights and same precision. fp32 runtimes are
    interchangeable (OpenVINO's features equal TensorFlow's within 1e-4, a tested property); ids without a
    runtime suffix (rows written before runtimes were recorded) are TensorFlow fp32."""

    def split(identifier: str) -> tuple[str, str]:
        match = re.fullmatch(r"(.*)/(?:[a-z]+)-(fp32|bf16|int8)", identifier)
        return (match.group(1), match.group(2)) if match else (identifier, "fp32")

    return split(model_id) == split(other)
