"""``fruits identify PHOTO...``: what fruit is this? No Spark: a handful of photos is answered in-process.

Each photo goes through the stream's own decoding and model (same weights, checked against the model id of the
features the PCA was fitted on), is projected with the latest PCA version exactly as Spark's ``PCAModel.transform``
does (x · components, no centring), and is compared with the labelled rows of ``tables/pca``: the 5 nearest vote, weighted by 1/distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from fruits.config import Config, join_uri
from fruits.images import RejectedImage, decode_image
from fruits.model import WeightsRef
from fruits.runtimes import make_handler, same_features
from fruits.status import last_refit, open_table, rust_uri


class IdentifyError(RuntimeError):
    """Nothing to identify against yet, or the weights differ from those of the stored features."""


@dataclass(frozen=True)
class Reference:
    """The latest PCA version and the labelled rows of ``tables/pca``, loaded once for many photos."""

    version: int
    components: np.ndarray  # (1280, k)
    labels: np.ndarray  # (n,)
    points: np.ndarray  # (n, k) float32
    model_ids: list[str]

    @classmethod
    def load(cls, config: Config) -> "Reference":
        refit = last_refit(config)
        if refit is None:
            raise IdentifyError(f"no PCA model under {config.pca_models}: run `fruits refit-pca` first")
        folder = join_uri(config.pca_models, f"v{refit['version']}")
        fs, path = pafs.FileSystem.from_uri(rust_uri(join_uri(folder, "components.npy")))
        with fs.open_input_file(path) as handle:
            components = np.load(handle)
        table = open_table(config.pca_table)
        if table is None:
            raise IdentifyError(f"no pca table at {config.pca_table}")
        rows = rows_of_version(table, refit["version"])
        rows = rows[rows["label"].notna()]
        if rows.empty:
            raise IdentifyError("the pca table has no labelled rows of the latest PCA version")
        return cls(
            refit["version"], components, rows["label"].to_numpy(), np.stack(rows["pca"].to_numpy()), refit["model_ids"]
        )


def rows_of_version(table, version: int):
    """The rows of PCA ``version`` in the pca table: its current snapshot's, or, while a refit is replacing the
    table (it overwrites the table before it writes the new version's metadata, so readers still see the previous
    version as the latest), those of the newest earlier snapshot that holds them."""
    snapshot = table.version()
    while True:
        rows = table.to_pyarrow_dataset().to_table(columns=["label", "pca", "pca_version"]).to_pandas()
        held = set(rows["pca_version"].unique())
        if version in held or snapshot == 0 or (held and max(held) < version):
            return rows[rows["pca_version"] == version]
        snapshot -= 1
        table.load_as_version(snapshot)


def nearest(reference: Reference, projected: np.ndarray, neighbours: int = 5) -> dict:
    """Top-``neighbours`` labelled rows by Euclidean distance, and their vote weighted by 1/distance: the
    confidence is the winning label's share of the weights."""
    distances = np.linalg.norm(reference.points - projected.astype(np.float32), axis=1)
    order = np.argsort(distances, kind="stable")[:neighbours]
    found = [{"label": str(reference.labels[i]), "distance": round(float(distances[i]), 4)} for i in order]
    weights: dict[str, float] = {}
    for i in order:
        weights[str(reference.labels[i])] = weights.get(str(reference.labels[i]), 0.0) + 1.0 / (float(distances[i]) + 1e-6)
    predicted = max(weights, key=weights.get)
    return {"predicted": predicted, "confidence": round(weights[predicted] / sum(weights.values()), 3), "neighbors": found}


def identify(photos: list[Path], config: Config, weights: WeightsRef, neighbours: int = 5) -> list[dict]:
    """One result per photo: ``photo``, ``predicted``, ``confidence``, ``neighbors``, or ``error``."""
    reference = Reference.load(config)
    if not any(stored == weights.model_id or stored.startswith(weights.model_id + "/") for stored in reference.model_ids):
        raise IdentifyError(
            f"--weights give model id {weights.model_id}, but PCA v{reference.version} was fitted on features of "
            f"{', '.join(reference.model_ids)}: pass the weights the stream used"
        )
    model_cfg = config.section("model")
    handler = make_handler(config, weights, threads=0)  # the stream's own factory: same runtime, same model id
    if not any(same_features(handler.model_id, stored) for stored in reference.model_ids):
        raise IdentifyError(
            f"--runtime/--precision give model id {handler.model_id}, but PCA v{reference.version} was fitted on "
            f"features of {', '.join(reference.model_ids)}: pass the precision the stream used"
        )
    results, images, good = [], [], []
    for photo in photos:
        try:
            images.append(decode_image(photo.read_bytes(), handler.image_size, int(model_cfg["max_pixels"])))
            good.append(len(results))
            results.append({"photo": str(photo)})
        except (OSError, RejectedImage) as exc:
            results.append({"photo": str(photo), "error": str(exc)})
    if images:
        features = handler.run_inference(np.stack(images), handler.load_model())
        projected = (features.astype(np.float64) @ reference.components).astype(np.float32)
        for index, vector in zip(good, projected):
            results[index].update(nearest(reference, vector, neighbours), pca_version=reference.version)
    return results
