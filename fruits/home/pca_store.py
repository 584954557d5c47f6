"""The PCA model store: ``models/pca/vN/`` folders, one per refit. The only code that knows their layout.

Each version folder holds ``spark-model`` (a Spark ML ``PCAModel``, written by the refit with Spark, or in Spark
ML's format without a JVM), ``components.npy`` (the same (d, k) matrix, for readers without Spark), ``moments.npz`` (the statistics an
incremental refit merges new rows into), the PNG plots, and ``metadata.json``, written last and atomically: a
version without it is an interrupted refit, invisible to readers and redone by the next refit.

No Spark here: the store is given the home's file system (:mod:`fruits.home.filesystem`): ``fruits status``,
``fruits identify`` and ``fruits serve`` read it without a JVM (:attr:`fruits.home.home.Home.files`); the refit on
Spark writes it through Hadoop's (:meth:`fruits.home.home.Home.spark_files`), which knows the cluster's credentials.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np

from fruits.config import RefitEngine, join_uri
from fruits.home.filesystem import Files, FileSystem

METADATA = "metadata.json"
MOMENTS = "moments.npz"
COMPONENTS = "components.npy"
SPARK_MODEL = "spark-model"
PLOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\.png")
VERSION_FOLDER = re.compile(r"v(\d+)")
# How a refit got its statistics: from every row, or the last version's merged with the new rows'.
FitMethod = Literal["full", "incremental"]


@dataclass(frozen=True)
class PcaVersion:
    """What ``models/pca/vN/metadata.json`` records about one refit."""

    version: int
    k: int
    explained_variance: list[float]
    rows: int
    source_version: int
    fit_seconds: float
    fitted_at: str
    model_path: str
    model_ids: list[str]
    method: FitMethod = "full"
    k_rule: str = ""
    new_rows: int = 0
    fallback_reason: str | None = None
    plots: list[str] = field(default_factory=list)
    # Per table (features, quarantine, files): compacted with files before/after, or skipped and why, or the error.
    compaction: dict = field(default_factory=dict)
    # The version whose components the rows of tables/pca are projected with (see fruits.batch.pca_table): this
    # version after a full projection, an earlier one when the refit only appended its new rows. None in metadata
    # written before the field existed: then every row was projected with this version.
    projection_version: int | None = None
    # How the refit wrote tables/pca, "all rows" (overwritten) or "new rows" (appended), and why; the rows written.
    projection: str = "all rows"
    projected_rows: int = 0
    # Seconds per step of the refit (compaction, read, statistics, write, projection, plots), for docs/refit.md.
    timings: dict = field(default_factory=dict)
    # Where the refit ran: "spark", or "local" (delta-rs + numpy, no JVM); "spark" before the field existed.
    engine: RefitEngine = "spark"
    # The features table fitted (the home's active model's, fruits.home.models); None in metadata written before the
    # field existed: the first model's.
    features_table: str | None = None

    @property
    def coordinates_version(self) -> int:
        """The model version the ``pca`` column of tables/pca is in, as of this version."""
        return self.projection_version or self.version

    @classmethod
    def from_json(cls, text: str) -> "PcaVersion":
        """A record from its metadata (keys this code does not know, from a newer writer, are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in json.loads(text).items() if key in known})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class PcaModelStore:
    """The versions under ``root`` (``[paths] pca_models``): list them, read them, write a new one."""

    def __init__(self, root: str, files: FileSystem | None = None) -> None:
        self.root = root
        self.files: FileSystem = files or Files()  # (the default reaches local paths only)

    def folder(self, version: int) -> str:
        return join_uri(self.root, f"v{int(version)}")

    def spark_model_path(self, version: int) -> str:
        """Where the refit saves version ``version``'s Spark ML ``PCAModel`` (``PCAModel.load`` reads it back)."""
        return join_uri(self.folder(version), SPARK_MODEL)

    def _numbers(self) -> list[int]:
        """The numbers of the ``vN`` folders, complete or not, ascending."""
        folders = [entry.name for entry in self.files.list(self.root) if entry.is_dir]
        return sorted(int(m.group(1)) for m in map(VERSION_FOLDER.fullmatch, folders) if m)

    def versions(self) -> list[PcaVersion]:
        """The complete versions (those with their metadata), oldest first."""
        return [record for record in map(self._record, self._numbers()) if record is not None]

    def version(self, version: int) -> PcaVersion | None:
        """Version ``version``'s record, or None if it is not complete."""
        return self._record(version)

    def latest(self) -> PcaVersion | None:
        """The newest complete version, or None before the first refit (folders without metadata are skipped)."""
        for number in reversed(self._numbers()):
            record = self._record(number)
            if record is not None:
                return record
        return None

    def _record(self, version: int) -> PcaVersion | None:
        data = self.files.read(join_uri(self.folder(version), METADATA))
        return PcaVersion.from_json(data.decode("utf-8")) if data is not None else None

    def components(self, version: int) -> np.ndarray:
        """Version ``version``'s (d, k) components: ``pca = features · components``, as ``PCAModel.transform``."""
        data = self.files.read(join_uri(self.folder(version), COMPONENTS))
        if data is None:
            raise FileNotFoundError(f"no {COMPONENTS} in {self.folder(version)}")
        return np.load(io.BytesIO(data))

    def statistics(self, version: int) -> bytes | None:
        """Version ``version``'s stored statistics (``fruits.batch.moments.Moments.to_bytes``), or None."""
        return self.files.read(join_uri(self.folder(version), MOMENTS))

    def plot(self, version: int, name: str) -> bytes | None:
        """A PNG plot of version ``version`` (a plain ``name.png`` in its folder), or None."""
        if not PLOT_NAME.fullmatch(name):
            return None
        return self.files.read(join_uri(self.folder(version), name))

    def write_arrays(self, version: int, components: np.ndarray, statistics: bytes) -> None:
        """Version ``version``'s components and statistics (before its metadata)."""
        buffer = io.BytesIO()
        np.save(buffer, components)
        self.files.write(join_uri(self.folder(version), COMPONENTS), buffer.getvalue())
        self.files.write(join_uri(self.folder(version), MOMENTS), statistics)

    def write_plot(self, version: int, name: str, png: bytes) -> None:
        if not PLOT_NAME.fullmatch(name):
            raise ValueError(f"not a plot name: {name!r}")
        self.files.write(join_uri(self.folder(version), name), png)

    def commit(self, record: PcaVersion) -> None:
        """Write ``record`` as its version's metadata, last and atomically: the version is then complete."""
        self.files.write(join_uri(self.folder(record.version), METADATA), record.to_json().encode("utf-8"))


def latest_record(store: PcaModelStore) -> dict[str, Any] | None:
    """The newest complete version's metadata as a JSON-able dict (for ``fruits status`` and the web page), or None."""
    latest = store.latest()
    return asdict(latest) if latest else None
