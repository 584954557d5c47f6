"""``--precision int8``: post-training quantization of the converted MobileNetV2 IR with OpenVINO's NNCF.

The int8 IR is the fp32 IR of :func:`fruits.model.ir.convert_once` (the same Keras model) quantized by
``nncf.quantize``, which measures activation ranges on a fixed calibration set of real photos, decoded and
preprocessed exactly as the stream does. By default that set is the 131 attributed Fruits-360 photos shipped in the
package (``fruits/model/calibration/images``, see its ATTRIBUTION.md); ``[model] calibration`` points to another folder.

The quantized IR is cached beside the fp32 one, keyed by the weights' sha256, the calibration set's hash and NNCF's
version, so it is made once per user and reused by every home. Quantizing runs in a child process: NNCF (and its
scikit-learn/scipy) never stays resident in the stream's driver, and Python workers load only OpenVINO.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from fruits.config import Config, ConfigError
from fruits.model.ir import convert_once, ir_basename, run_in_child, save_atomically
from fruits.model.weights import WeightsRef

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("fruits.model.quantize")

SHIPPED_CALIBRATION = Path(__file__).resolve().parent / "calibration" / "images"
CALIBRATION_EXTENSIONS = (".jpg", ".jpeg", ".png")
INSTALL_HINT = "--precision int8 needs NNCF: pip install 'fruits[int8]' (or pip install nncf)"


@dataclass(frozen=True)
class CalibrationSet:
    """The photos the quantizer calibrates on: their paths in a stable order and a hash of their names and bytes."""

    folder: str
    files: tuple[str, ...]
    sha256: str

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> "CalibrationSet":
        """Every image (.jpg, .jpeg, .png, hidden files excepted) under ``folder``, sorted by relative path."""
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"[model] calibration {folder}: no such folder of photos")
        files = sorted(
            path for path in root.rglob("*")
            if path.suffix.lower() in CALIBRATION_EXTENSIONS and path.is_file() and not path.name.startswith(".")
        )
        if not files:
            raise ConfigError(f"[model] calibration {folder}: no .jpg, .jpeg or .png photo in it")
        digest = hashlib.sha256()
        for path in files:  # names and contents: a renamed, added or changed photo makes another int8 model
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return cls(str(root), tuple(str(path) for path in files), digest.hexdigest())


def calibration_set(config: Config) -> CalibrationSet:
    """``[model] calibration``: a folder of photos, or empty for the photos shipped in the package."""
    folder = config.model.calibration
    return CalibrationSet.from_folder(folder or SHIPPED_CALIBRATION)


def nncf_version() -> str:
    """The installed NNCF's version (part of the int8 cache key); a clear error if NNCF is not installed."""
    try:
        return metadata.version("nncf")
    except metadata.PackageNotFoundError:
        raise ConfigError(INSTALL_HINT) from None


def int8_basename(weights: WeightsRef, calibration: CalibrationSet, image_size: int = 224) -> str:
    """File name (without extension) of the int8 IR: unique per weights, calibration set and NNCF version, and never
    that of an fp32 IR (both can sit in SparkFiles' flat folder)."""

    return f"{ir_basename(weights, image_size)}-int8-cal{calibration.sha256[:16]}-nncf{nncf_version()}"


def quantize_once(
    weights: WeightsRef, calibration: CalibrationSet, cache_dir: str | os.PathLike[str], image_size: int = 224
) -> str:
    """The path of the int8 IR (.xml; its .bin beside it) of the Keras model built with ``weights``.

    Made (fp32 conversion first, if not cached either) only if not cached yet under ``cache_dir/openvino/``, in a
    child process, and saved atomically (:func:`fruits.model.ir.save_atomically`)."""

    name = int8_basename(weights, calibration, image_size)
    folder = Path(cache_dir) / "openvino"
    xml = folder / name / f"{name}.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        return str(xml)
    fp32_xml = convert_once(weights, cache_dir, image_size)
    log.info(
        "quantizing %s to int8 with NNCF on %d photos of %s (once per weights and calibration set)",
        weights.model_id, len(calibration.files), calibration.folder,
    )
    run_in_child(_quantize, fp32_xml, calibration, str(folder), name, image_size)
    return str(xml)


def _quantize(fp32_xml: str, calibration: CalibrationSet, folder: str, name: str, image_size: int) -> None:
    """Quantize the fp32 IR on the calibration photos (decoded and preprocessed as the stream does) and save it."""
    import nncf
    import openvino as ov

    from fruits.model.featurizer import mobilenet_v2_preprocess

    images = [calibration_image(path, image_size) for path in calibration.files]
    dataset = nncf.Dataset(images, lambda image: mobilenet_v2_preprocess(image[None]))
    quantized = nncf.quantize(
        ov.Core().read_model(fp32_xml),
        dataset,
        preset=nncf.QuantizationPreset.PERFORMANCE,  # symmetric weights and activations: the fastest int8 kernels
        subset_size=len(images),  # every calibration photo (NNCF's default takes at most 300)
    )
    save_atomically(quantized, folder, name)


def calibration_image(path: str, image_size: int) -> "np.ndarray":
    """One calibration photo decoded as the stream decodes it; an unreadable one is a configuration error naming it."""
    from fruits.model.images import RejectedImage, decode_image

    try:
        return decode_image(Path(path).read_bytes(), image_size)
    except (OSError, RejectedImage) as exc:
        raise ConfigError(f"[model] calibration: cannot use {path}: {exc}") from None
