"""``fruits identify PHOTO...``: what fruit is this? No Spark: a handful of photos is answered in-process.

Each photo goes through the stream's own decoding and model (same weights, checked against the model id of the
features the PCA was fitted on), is projected with the components of the version tables/pca is in (the newest
model's ``projection_version``) exactly as Spark's ``PCAModel.transform`` does (x · components, no centring), and is
compared with the labelled rows of ``tables/pca``: the 5 nearest vote, weighted by 1/distance.
:class:`Identifier` keeps the model loaded between calls and takes bytes (``fruits serve`` uses it);
:func:`identify` is the command's one-shot use of it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fruits.config import Config
from fruits.errors import Unavailable
from fruits.model.active import record_settings, with_model
from fruits.model.featurizer import Featurizer
from fruits.model.images import RejectedImage, decode_image
from fruits.model.weights import WeightsRef, resolve_weights
from fruits.home.home import Home
from fruits.home.models import ModelRecord
from fruits.home.pca_store import latest_record
from fruits.home.tables import Table
from fruits.model.runtimes import make_featurizer, same_features


log = logging.getLogger("fruits.identify")


class IdentifyError(Unavailable):
    """Nothing to identify against yet, or the weights differ from those of the stored features."""


@dataclass(frozen=True)
class Reference:
    """The latest PCA version and the labelled rows of ``tables/pca``, loaded once for many photos."""

    version: int
    components: np.ndarray  # (1280, k)
    labels: np.ndarray  # (n,)
    points: np.ndarray  # (n, k) float32
    model_ids: list[str]
    paths: np.ndarray  # (n,) where each row's photo is now (``stored_path``: archived, or still in landing)
    model_version: int  # the newest model version when loaded (its coordinates version is ``version``)

    @classmethod
    def load(cls, home: Home, refit: dict | None = None) -> "Reference":
        """The rows of ``refit`` (a :func:`fruits.home.pca_store.latest_record`; by default the newest version), in the
        coordinates tables/pca is in as of that version (its ``projection_version``, see fruits.batch.pca_table)."""
        store = home.pca_store
        refit = refit or latest_record(store)
        if refit is None:
            raise IdentifyError(f"no PCA model under {home.pca_models}: run `fruits refit-pca` first")
        coordinates = int(refit.get("projection_version") or refit["version"])
        components = store.components(coordinates)
        pca = home.pca
        if not pca.exists():
            raise IdentifyError(f"no pca table at {pca.location}")
        rows = rows_of_version(pca, coordinates)
        rows = rows[rows["label"].notna()]
        if rows.empty:
            raise IdentifyError(f"the pca table has no labelled rows of PCA version {coordinates}")
        return cls(
            coordinates, components, rows["label"].to_numpy(), np.stack(rows["pca"].to_numpy()), refit["model_ids"],
            rows["shown_path"].to_numpy(), refit["version"],
        )


def rows_of_version(pca: Table, version: int):
    """The rows of PCA ``version`` in the pca table: its current snapshot's, or, while a refit is replacing the
    table (it overwrites the table before it writes the new version's metadata, so readers still see the previous
    version as the latest), those of the newest earlier snapshot that holds them."""
    snapshot = pca.version()
    while True:
        rows = pca.read(["path", "stored_path", "label", "pca", "pca_version"], version=snapshot).to_pandas()
        # where each row's photo is now (archived after ingestion), for thumbnails; tables of older refits: its path
        rows["shown_path"] = rows["stored_path"].fillna(rows["path"])
        held = set(rows["pca_version"].unique())
        if version in held or snapshot == 0 or (held and max(held) < version):
            return rows[rows["pca_version"] == version]
        snapshot -= 1


def nearest(reference: Reference, projected: np.ndarray, *, neighbours: int = 5, with_paths: bool = False) -> dict:
    """Top-``neighbours`` labelled rows by Euclidean distance, and their vote weighted by 1/distance: the
    confidence is the winning label's share of the weights. ``with_paths`` adds each neighbour's ``path``."""
    distances = np.linalg.norm(reference.points - projected.astype(np.float32), axis=1)
    order = np.argsort(distances, kind="stable")[:neighbours]
    found = [{"label": str(reference.labels[i]), "distance": round(float(distances[i]), 4)} for i in order]
    if with_paths:
        for neighbour, i in zip(found, order):
            neighbour["path"] = str(reference.paths[i])
    weights: dict[str, float] = {}
    for i in order:
        weights[str(reference.labels[i])] = weights.get(str(reference.labels[i]), 0.0) + 1.0 / (float(distances[i]) + 1e-6)
    predicted = max(weights, key=weights.get)
    return {"predicted": predicted, "confidence": round(weights[predicted] / sum(weights.values()), 3), "neighbors": found}


class Identifier:
    """Identifies photos given as bytes; keeps its model loaded (once per process) and follows the PCA versions.

    ``fruits identify`` makes one per run; ``fruits serve`` keeps one for its whole life: each call looks at the
    newest PCA version and reloads the reference rows only when a refit made a new one, so no restart is needed.
    Thread-safe: concurrent calls share the compiled model, each with its own inference request, and the reference
    rows: after a new PCA version, one call reloads them while the others wait for that one load. ``threads``:
    inference threads (0: the runtime's choice, every core; ``fruits serve`` bounds it).
    """

    def __init__(self, home: Home, weights: WeightsRef, threads: int = 0) -> None:
        self.home, self.config, self.weights, self.threads = home, home.config, weights, threads
        self.max_pixels = self.config.model.max_pixels
        self._lock = threading.Lock()
        self._reload = threading.Lock()
        self._reference: Reference | None = None
        self._featurizer: Featurizer | None = None
        self._model: Any = None

    def featurizer(self) -> tuple[Featurizer, Any]:
        """The stream's own featurizer (same runtime, same model id) and its model, built on the first call."""
        with self._lock:
            if self._model is None:
                featurizer = make_featurizer(self.config, self.weights, threads=self.threads)
                self._model, self._featurizer = featurizer.load_model(), featurizer
            assert self._featurizer is not None
            return self._featurizer, self._model

    def reference(self) -> Reference:
        """The newest PCA version's reference rows, checked against the weights and runtime in use."""
        refit = latest_record(self.home.pca_store)
        if refit is None:
            raise IdentifyError(f"no PCA model under {self.config.pca_models}: run `fruits refit-pca` first")
        current = self._reference
        if current is not None and current.model_version == refit["version"]:
            return current
        with self._reload:
            return self._load_reference(refit)

    def _load_reference(self, refit: dict) -> Reference:
        current = self._reference  # loaded by another call while this one waited for the lock?
        if current is not None and current.model_version == refit["version"]:
            return current
        reference = Reference.load(self.home, refit)
        featurizer, _ = self.featurizer()
        if not any(same_features(featurizer.model_id, stored) for stored in reference.model_ids):
            record = self._model_of(reference, featurizer)
            if record is None:
                self._refuse(reference, featurizer)
            self._follow(record)  # a switch made another model active and this PCA version was fitted on it
        self._reference = reference
        return reference

    def _model_of(self, reference: Reference, featurizer: Featurizer) -> ModelRecord | None:
        """The home's model whose features ``reference`` was fitted on, if this identifier runs one of the home's
        models (a switch moved the home from one to the other); None for a model the home never had."""
        models = [m for m in self.home.models.load().models if m.state not in ("pruned", "abandoned")]
        if not any(same_features(m.model_id, featurizer.model_id) for m in models):
            return None
        return next((m for m in reversed(models) if any(same_features(m.model_id, s) for s in reference.model_ids)), None)

    def _follow(self, record: ModelRecord) -> None:
        """Answer with ``record``'s model from now on (built at the next call)."""
        log.info("identify follows model %d (%s)", record.number, record.model_id)
        weights = resolve_weights(record.weights)
        if weights.model_id != record.weights_id:
            raise IdentifyError(
                f"model {record.number}'s weights {record.weights!r} now give {weights.model_id}, not "
                f"{record.weights_id}: the file changed; restore it to answer with that model"
            )
        with self._lock:
            self.config, self.weights = with_model(self.config, **record_settings(record)), weights
            self._model = self._featurizer = None

    def _refuse(self, reference: Reference, featurizer: Featurizer) -> None:
        if not any(stored == self.weights.model_id or stored.startswith(self.weights.model_id + "/") for stored in reference.model_ids):
            raise IdentifyError(
                f"--weights give model id {self.weights.model_id}, but PCA v{reference.version} was fitted on features "
                f"of {', '.join(reference.model_ids)}: pass the weights the stream used"
            )
        raise IdentifyError(
            f"--runtime/--precision give model id {featurizer.model_id}, but PCA v{reference.version} was fitted on "
            f"features of {', '.join(reference.model_ids)}: pass the precision the stream used"
        )

    def identify(
        self, photos: Sequence[tuple[str, bytes | Exception]], *, neighbours: int = 5, with_paths: bool = False
    ) -> list[dict]:
        """One result per ``(name, bytes)``: ``photo``, ``predicted``, ``confidence``, ``neighbors``,
        ``pca_version``, or ``photo`` and ``error`` (undecodable bytes, or the exception given instead of bytes)."""
        reference = self.reference()
        featurizer, model = self.featurizer()
        if not any(same_features(featurizer.model_id, stored) for stored in reference.model_ids):
            # another call followed a switch between the two lines above: take the pair again, now consistent
            reference = self.reference()
            featurizer, model = self.featurizer()
        results, images, good = [], [], []
        for name, data in photos:
            try:
                if isinstance(data, Exception):
                    raise data
                images.append(decode_image(data, featurizer.image_size, self.max_pixels))
                good.append(len(results))
                results.append({"photo": name})
            except (OSError, RejectedImage) as exc:
                results.append({"photo": name, "error": str(exc)})
        if images:
            features = featurizer.run_inference(np.stack(images), model)
            projected = (features.astype(np.float64) @ reference.components).astype(np.float32)
            for index, vector in zip(good, projected):
                results[index].update(nearest(reference, vector, neighbours=neighbours, with_paths=with_paths), pca_version=reference.version)
        return results


def identify(photos: list[Path], config: Config, weights: WeightsRef, *, neighbours: int = 5) -> list[dict]:
    """One result per photo file: ``photo``, ``predicted``, ``confidence``, ``neighbors``, or ``error``."""
    identifier = Identifier(Home.from_config(config), weights)
    identifier.reference()  # no model, or other weights: IdentifyError before any photo is read
    contents: list[tuple[str, bytes | Exception]] = []
    for photo in photos:
        try:
            contents.append((str(photo), photo.read_bytes()))
        except OSError as exc:
            contents.append((str(photo), exc))
    return identifier.identify(contents, neighbours=neighbours)
