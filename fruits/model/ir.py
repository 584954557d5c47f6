"""OpenVINO IR on the driver: the Keras model converted once per weights file (in a child process, so TensorFlow
never stays in the stream's driver), cached per user, saved atomically so concurrent converters do not clash."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

from fruits.config import Config, ConfigError, user_cache_dir
from fruits.home.uris import local_path
from fruits.model.weights import ARCHITECTURE, WeightsRef

log = logging.getLogger("fruits.model.ir")


def ir_basename(weights: WeightsRef, image_size: int = 224) -> str:
    """File name (without extension) of the IR converted from ``weights``: unique per weights file, so the .xml and
    .bin of several weights can sit side by side in SparkFiles' flat folder."""
    return f"{ARCHITECTURE.replace('_224', '')}_{image_size}-{weights.sha256[:32]}"


def ir_cache_dir(config: Config) -> Path:
    """Where converted (and quantized) IR is cached, per user rather than per home, so a new home does not pay the
    conversion again: ``[model] ir_cache`` if set, else :func:`fruits.config.user_cache_dir`.
    Always a local folder on the driver: OpenVINO reads IR from local files, and executors get their copy through
    ``SparkContext.addFile`` (the featurizer's ``files``)."""
    configured = config.model.ir_cache
    if configured:
        folder = local_path(configured)
        if folder is None:
            raise ConfigError(f"[model] ir_cache = {configured!r}: must be a local folder (OpenVINO reads local files)")
        return Path(folder).expanduser()
    return user_cache_dir()


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
    # In a child process: TensorFlow's memory must not stay resident in the long-running stream's driver.
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

    from fruits.model.keras import build_keras_model

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
