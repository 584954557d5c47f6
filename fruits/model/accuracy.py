"""What a model's features are worth, measured with ImageNet's own classifier, and ``precision = "auto"``.

MobileNetV2's features are the input of its ImageNet classifier (the with-top weights file's Dense 1280 -> 1000
layer, "the head"). Thirteen Fruits-360 classes are ImageNet classes too (:data:`IMAGENET_CLASSES`), so the share of
their photos whose ImageNet class is among the head's top 5 on a model's features is an accuracy that needs no
training: the accuracy table of docs/models.md, and the gate of ``precision = "auto"``.

:func:`choose_precision` returns the fastest precision that passes the gate on this CPU: int8 where the CPU has
VNNI or AMX int8, then bf16 where it has AVX512_BF16 or AMX bf16, then fp32, which always passes. The gate
(docs/models.md, "Precision `auto`: the accuracy gate") runs the candidate and fp32 on the calibration photos
(:func:`fruits.model.quantize.calibration_set`) and compares them through the head. The caller resolves ``auto``
once per home and records the choice (:func:`fruits.model.runtimes.make_featurizer` refuses an unresolved one).

``[model] head_weights`` says where the head comes from: ``"imagenet"`` (Keras' own download of the with-top file,
cached like the no-top one, :func:`fruits.model.weights.keras_imagenet_file`) or a local with-top weights file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, cast

import numpy as np

from fruits.config import Config, ConfigError, Precision
from fruits.model.cpu import Cpu, cpu_info
from fruits.model.weights import WeightsRef, WeightsUnavailable, keras_imagenet_file

if TYPE_CHECKING:
    from fruits.model.featurizer import Featurizer

log = logging.getLogger("fruits.model.accuracy")

# Fruits-360 classes (folder names) that ImageNet knows, with their ImageNet class index.
IMAGENET_CLASSES: dict[str, int] = {
    "Banana": 954,
    "Apple Granny Smith": 948,
    "Strawberry": 949,
    "Orange": 950,
    "Lemon": 951,
    "Fig": 952,
    "Pineapple": 953,
    "Pomegranate": 957,
    "Cauliflower": 938,
    "Pepper Red": 945,
    "Pepper Green": 945,
    "Pepper Yellow": 945,
    "Pepper Orange": 945,
}
HEAD_HINT = (
    "Set [model] head_weights to a local MobileNetV2 weights file with its ImageNet classifier head "
    "(a Keras .weights.h5 or .h5 made with include_top=True), or FRUITS_HEAD_WEIGHTS=FILE."
)

# The gate (docs/models.md): a candidate's ImageNet top-5 on the gate photos may be at most this far below fp32's...
MAX_TOP5_LOSS = 0.01
# ... and, on every calibration photo (whatever its fruit), fp32's top-1 ImageNet class must be among the candidate's
# top 5 at least this often (docs/models.md says why this and not top-1 agreement).
MIN_TOP1_KEPT = 0.98
# Fewer gate photos than this (a calibration folder of other fruits) cannot judge a candidate.
MIN_GATE_PHOTOS = 10
# The order auto tries the precisions in: the fastest first (bench/int8.py, docs/int8.md).
FASTEST_FIRST: tuple[Precision, ...] = ("int8", "bf16", "fp32")


@dataclass(frozen=True, eq=False)
class ImageNetHead:
    """The ImageNet classifier of a with-top weights file: ``logits = features @ kernel + bias``."""

    kernel: np.ndarray  # (1280, 1000)
    bias: np.ndarray  # (1000,)
    path: str

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float32) @ self.kernel + self.bias

    def top(self, features: np.ndarray, k: int = 5) -> np.ndarray:
        """The ``k`` ImageNet classes of highest logit per row, best first: ``(n, k)``."""
        logits = self.logits(features)
        part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)

    def top5_hits(self, features: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """Per row, whether the ImageNet class of its label (one of :data:`IMAGENET_CLASSES`) is in its top 5."""
        expected = np.array([IMAGENET_CLASSES[label] for label in labels])
        return (self.top(features, 5) == expected[:, None]).any(axis=1)


def read_head(path: str | os.PathLike[str]) -> ImageNetHead:
    """The Dense 1280 -> 1000 layer of a Keras MobileNetV2 weights file with its head: Keras 3's ``.weights.h5``
    (one group per layer, the head is its only Dense layer) or the legacy ``.h5`` of Keras' own download (the layer
    named ``predictions``). A file without the head is a :class:`WeightsUnavailable` naming the setting."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if "layers" in handle:
                names = [k for k in handle["layers"] if k == "predictions" or k == "dense" or k.startswith("dense_")]
                arrays = [handle["layers"][names[0]]["vars"][i][()] for i in ("0", "1")] if names else []
            else:
                root = handle["model_weights"] if "model_weights" in handle else handle
                layer = root["predictions"] if "predictions" in root else None
                weight_names = [] if layer is None else [
                    n.decode() if isinstance(n, bytes) else str(n) for n in layer.attrs.get("weight_names", [])
                ]
                arrays = [layer[name][()] for name in weight_names] if layer is not None else []
    except OSError as exc:
        raise WeightsUnavailable(f"[model] head_weights {path}: not a Keras HDF5 weights file ({exc}). {HEAD_HINT}") from None
    kernel, bias = (arrays + [None, None])[:2]
    if kernel is None or bias is None or kernel.ndim != 2 or kernel.shape[1] != 1000 or bias.shape != (1000,):
        raise WeightsUnavailable(f"[model] head_weights {path}: no 1000-class ImageNet head in it. {HEAD_HINT}")
    return ImageNetHead(kernel.astype(np.float32), bias.astype(np.float32), str(path))


def imagenet_head(config: Config) -> ImageNetHead:
    """``[model] head_weights``: Keras' download of the with-top file (``"imagenet"``), or a local file."""
    spec = config.model.head_weights
    if spec == "imagenet":
        return read_head(keras_imagenet_file(include_top=True, offline_hint=HEAD_HINT))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"[model] head_weights {spec}: no such file. {HEAD_HINT}")
    return read_head(path)


def known_fruit(path: str | os.PathLike[str]) -> str | None:
    """The Fruits-360 class ImageNet knows that a photo shows, by its folder's name (``.../Banana/x.jpg``), or None."""
    label = Path(path).parent.name
    return label if label in IMAGENET_CLASSES else None


def load_photos(files: Sequence[str], image_size: int = 224) -> np.ndarray:
    """The photos decoded as the stream decodes them: ``(n, size, size, 3)`` uint8."""
    from fruits.model.quantize import calibration_image

    return np.stack([calibration_image(path, image_size) for path in files])


# --- precision = "auto" ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateResult:
    """One precision measured on the gate photos, against fp32 (fp32's own row compares it with itself)."""

    precision: Precision
    imagenet_top5: float  # on the gate photos (the calibration photos of fruits ImageNet knows)
    top1_kept: float  # on every calibration photo: share whose top 5 hold fp32's top-1 ImageNet class
    passed: bool
    reason: str  # why it passed or failed, for people


@dataclass(frozen=True)
class PrecisionChoice:
    """What :func:`choose_precision` chose and why: every candidate tried (fastest first), the CPU it was chosen on
    (:meth:`fruits.model.cpu.Cpu.summary`), the photos it was judged on, and the precisions not tried with why."""

    precision: Precision
    candidates: tuple[CandidateResult, ...]
    cpu: str
    gate_photos: int
    calibration_photos: int
    skipped: dict[str, str]

    def describe(self) -> str:
        tried = "; ".join(f"{c.precision}: top-5 {c.imagenet_top5:.1%}, fp32's top-1 kept {c.top1_kept:.1%}, "
                          f"{'passed' if c.passed else 'failed'}" for c in self.candidates)
        skipped = "".join(f"; {p} not a candidate: {why}" for p, why in self.skipped.items())
        return (f"precision auto -> {self.precision} on {self.cpu} ({self.gate_photos} gate photos of "
                f"{self.calibration_photos} calibration photos; {tried}{skipped})")


def candidates(config: Config, cpu: Cpu | None = None) -> tuple[list[Precision], dict[str, str]]:
    """The precisions worth trying on ``cpu`` (this machine's by default), fastest first, and why the others are not.

    On this machine bf16 also needs OpenVINO's agreement (``--precision bf16`` is refused without it); a CPU given as
    a text is judged by its flags alone. int8 also needs NNCF installed."""
    from fruits.model.quantize import nncf_version
    from fruits.model.runtimes import cpu_supports_bf16

    here = cpu is None
    cpu = cpu or cpu_info()
    chosen: list[Precision] = []
    skipped: dict[str, str] = {}
    if config.model.runtime != "openvino":
        skipped["int8"] = skipped["bf16"] = f"runtime {config.model.runtime} runs fp32 only"
        return ["fp32"], skipped
    if not cpu.int8_candidate:
        skipped["int8"] = "no AVX512_VNNI, AVX_VNNI or AMX int8"
    else:
        try:
            nncf_version()
            chosen.append("int8")
        except ConfigError as exc:
            skipped["int8"] = exc.reason
    if not cpu.bf16_candidate:
        skipped["bf16"] = "no AVX512_BF16 or AMX bf16"
    elif here and not cpu_supports_bf16():
        skipped["bf16"] = "OpenVINO's CPU plugin offers no bf16 here"
    else:
        chosen.append("bf16")
    return [*chosen, "fp32"], skipped


def judge(precision: Precision, features: np.ndarray, fp32: np.ndarray, head: ImageNetHead,
          labels: Sequence[str | None]) -> CandidateResult:
    """The gate: ``features`` (a candidate's, on the calibration photos) against ``fp32``'s, through ``head``.
    ``labels``: per photo, its fruit if ImageNet knows it (a gate photo), else None."""
    known = np.array([label is not None for label in labels])
    gate_labels = [label for label in labels if label is not None]
    if len(gate_labels) < MIN_GATE_PHOTOS:
        raise ConfigError(
            f"precision auto: the calibration photos hold {len(gate_labels)} photos of fruits ImageNet knows, fewer "
            f"than {MIN_GATE_PHOTOS}: the gate cannot judge a precision on them. Add photos in folders named after "
            f"those fruits ({', '.join(sorted(IMAGENET_CLASSES))}) to [model] calibration, or choose a precision."
        )
    top5 = float(head.top5_hits(features[known], gate_labels).mean())
    reference = float(head.top5_hits(fp32[known], gate_labels).mean())
    kept = float((head.top(features, 5) == head.top(fp32, 1)).any(axis=1).mean())
    loss_ok, kept_ok = top5 >= reference - MAX_TOP5_LOSS - 1e-9, kept >= MIN_TOP1_KEPT
    reason = (f"ImageNet top-5 {top5:.1%} vs fp32 {reference:.1%} on {len(gate_labels)} photos "
              f"({(top5 - reference) * 100:+.1f} points, at most -{MAX_TOP5_LOSS * 100:.0f} allowed); fp32's top-1 "
              f"in its top 5 on {kept:.1%} of {len(labels)} photos (at least {MIN_TOP1_KEPT:.0%} required)")
    return CandidateResult(precision, top5, kept, loss_ok and kept_ok, reason)


def choose_precision(config: Config, weights: WeightsRef, *, cpu: Cpu | None = None,
                     head: ImageNetHead | None = None) -> PrecisionChoice:
    """The fastest precision that passes the gate on ``cpu`` (this machine's by default), and why.

    With fp32 the only candidate nothing is measured. Otherwise fp32 and each candidate, fastest first, featurize the
    calibration photos (int8's IR is quantized once per user and cached, like ``--precision int8`` does) until one
    passes :func:`judge`; fp32 is the answer when none does."""
    from fruits.model.quantize import calibration_set
    from fruits.model.runtimes import make_featurizer

    cpu_described = (cpu or cpu_info()).summary()
    tried, skipped = candidates(config, cpu)
    calibration = calibration_set(config)
    labels = [known_fruit(path) for path in calibration.files]
    gate_photos = sum(label is not None for label in labels)
    if tried == ["fp32"]:
        return PrecisionChoice("fp32", (), cpu_described, gate_photos, len(labels), skipped)
    head = head or imagenet_head(config)
    photos = load_photos(calibration.files, config.model.image_size)

    def features(precision: Precision) -> np.ndarray:
        # The precision is judged on the model's own output, whatever the home's views: the head classifies one
        # photo's vector, not a mean of normalised ones, and the views change every precision alike.
        model = dataclasses.replace(config.model, precision=precision, views="single")
        featurizer: Featurizer = make_featurizer(dataclasses.replace(config, model=model), weights)
        return featurizer.run_inference(photos, featurizer.load_model())

    fp32 = features("fp32")
    results = []
    for precision in tried:
        result = judge(precision, fp32 if precision == "fp32" else features(precision), fp32, head, labels)
        results.append(result)
        log.info("precision auto: %s %s: %s", precision, "passed" if result.passed else "failed", result.reason)
        if result.passed:
            break
    chosen = cast(Precision, results[-1].precision if results[-1].passed else "fp32")
    return PrecisionChoice(chosen, tuple(results), cpu_described, gate_photos, len(labels), skipped)
