"""Which MobileNetV2 weights: ``--weights imagenet`` (Keras' own download, cached) or a local Keras weights file,
resolved on the driver without importing TensorFlow, and the ``model_id`` recorded on every features row."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fruits.errors import Unavailable

ARCHITECTURE = "mobilenet_v2_1.0_224"
# Keras' own cache file for MobileNetV2(weights="imagenet", include_top=False, alpha=1.0, 224x224).
KERAS_IMAGENET_NOTOP = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# ... and with the 1000-class head (include_top=True): where the ImageNet head of fruits.model.accuracy comes from.
KERAS_IMAGENET_TOP = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
# Where the weights came from (part of every model id): Keras' ImageNet download, or a local file.
WeightsSource = Literal["imagenet", "file"]


class WeightsUnavailable(Unavailable):
    """The requested weights cannot be found or downloaded; the message says which option to use instead."""


@dataclass(frozen=True)
class WeightsRef:
    """A resolved weights file: where it is on the driver, its content hash and whether it holds the ImageNet head."""

    path: str
    sha256: str
    has_top: bool
    source: WeightsSource

    @property
    def model_id(self) -> str:
        """Identifies the features' producer: architecture, weights origin and the weights file's hash."""
        return f"{ARCHITECTURE}/{self.source}/sha256:{self.sha256[:16]}"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_have_top(path: str) -> bool:
    """Whether a Keras weights file (Keras 3 ``.weights.h5`` or legacy ``.h5``) holds the 1000-class Dense head."""
    import h5py

    with h5py.File(path, "r") as handle:
        if "layers" in handle:  # Keras 3 format: one group per layer, the head is the only Dense layer
            return any(name == "dense" or name.startswith("dense_") or name == "predictions" for name in handle["layers"])
        names = handle.attrs.get("layer_names")
        if names is None and "model_weights" in handle:
            names = handle["model_weights"].attrs.get("layer_names")
        return names is not None and any(
            (n.decode() if isinstance(n, bytes) else str(n)) == "predictions" for n in names
        )


# The hint each caller gives when Keras' download fails (offline): which setting takes a local file instead.
WEIGHTS_HINT = (
    "If this machine is offline, pass a local MobileNetV2 weights file with --weights FILE "
    "(or FRUITS_WEIGHTS=FILE): a Keras .weights.h5 or .h5, with or without the classifier head."
)


def keras_imagenet_file(include_top: bool = False, offline_hint: str = WEIGHTS_HINT) -> str:
    """Keras' own ImageNet MobileNetV2 file (no top, or with the 1000-class head), from Keras' cache (``~/.keras`` or
    ``$KERAS_HOME``); building the model makes Keras download it there (and check its hash) the first time."""
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    cached = os.path.join(keras_home, "models", KERAS_IMAGENET_TOP if include_top else KERAS_IMAGENET_NOTOP)
    if os.path.isfile(cached):
        return cached
    try:
        import keras

        keras.applications.MobileNetV2(weights="imagenet", include_top=include_top, input_shape=(224, 224, 3))
    except Exception as exc:
        raise WeightsUnavailable(
            f"Could not download Keras' ImageNet weights for MobileNetV2{' (with its classifier head)' if include_top else ''} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). {offline_hint}"
        ) from None
    if not os.path.isfile(cached):
        raise WeightsUnavailable(f"Keras loaded its ImageNet weights but not from {cached}. {offline_hint}")
    return cached


def resolve_weights(spec: str) -> WeightsRef:
    """Resolve ``--weights``: ``"imagenet"`` (Keras' download, cached in ~/.keras) or a local weights file."""
    if spec == "imagenet":
        path = keras_imagenet_file()
        return WeightsRef(path=path, sha256=_sha256(path), has_top=False, source="imagenet")
    path = str(Path(spec).expanduser().resolve())
    if not os.path.isfile(path):
        raise WeightsUnavailable(
            f"--weights {spec}: no such file. Pass a local Keras MobileNetV2 weights file "
            "(.weights.h5 or .h5, with or without the classifier head) or 'imagenet'."
        )
    try:
        has_top = weights_have_top(path)
    except OSError as exc:
        raise WeightsUnavailable(f"--weights {spec}: not a Keras HDF5 weights file ({exc})") from None
    return WeightsRef(path=path, sha256=_sha256(path), has_top=has_top, source="file")
