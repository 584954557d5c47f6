"""The refit without a JVM: the same steps as the Spark path (:mod:`.pca_fit`, :mod:`.pca_table`, :mod:`.compaction`)
in this process, with delta-rs and numpy, for homes whose rows to read fit in one process (``[pca] engine``,
``local_max_rows``; :func:`choose_engine`).

- **Rows**: the features table at the pinned version (full fit), or the rows inserted since the last model's source
  version from Delta's change data feed (``DeltaTable.load_cdf``: an ``OPTIMIZE`` commit, Spark's or delta-rs's, adds
  no change row), read in Arrow batches.
- **Statistics**: :class:`fruits.batch.moments.Moments` of blocks of at most :data:`BLOCK_ROWS` rows merged with
  the same pairwise update Spark's executors use; the same fallbacks to a full fit (changed or deleted rows, another
  model id, no stored statistics, no change feed).
- **Model**: Spark ML's ``PCAModel`` written in Spark ML's own format (:mod:`.spark_ml_format`), which
  ``PCAModel.load`` reads, beside the same ``components.npy``, ``moments.npz`` and metadata.
- **tables/pca**: the same rows, written with delta-rs: overwritten (every row), or the new rows appended with the
  same ``replaceWhere source_version > S`` as one commit (``predicate``).
- **Compaction**: delta-rs's ``optimize.compact`` under the same rule (``[compaction] min_extra_files``,
  ``target_file_mb``; :func:`fruits.batch.compaction.compact_tables_local`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fruits.batch.compaction import compact_tables_local
from fruits.batch.moments import Moments
from fruits.batch.pca_fit import Fit
from fruits.batch.spark_ml_format import write_pca_model
from fruits.config import RefitEngine
from fruits.errors import Unavailable
from fruits.home.home import Home
from fruits.home.pca_store import PcaVersion
from fruits.home.tables import PCA, Table

log = logging.getLogger("fruits.refit")

# Rows per block of statistics or projection: a (rows, 1280) float64 block is 84 MB at 8192 rows.
BLOCK_ROWS = 8192
ROW_COLUMNS = ["path", "stored_path", "label", "model_id", "features"]


def feature_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A list<float> column of equal-length vectors as a (rows, d) float64 array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0))
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), -1).astype(np.float64, copy=False)


class ChangedRows(Unavailable):
    """The change data feed holds rows other than inserts (updates, deletes) in the versions read: an incremental
    refit is not possible, the caller fits every row."""


@dataclass
class ArrowRows:
    """The rows a refit reads (path, stored_path, label, model_id, features), as Arrow batches read again at each
    pass (the statistics, then the projection), never all at once: a version of the features table, or (``since``
    set) the rows inserted in versions (since, version] from the change data feed."""

    features: Table
    version: int
    since: int | None = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The rows' batches (opened now: delta-rs must not be called from inside one of its own writes); the change
        feed's raise :class:`ChangedRows` at the first row that is not an insert. ``stored_path`` is null in tables
        older than the ledger."""
        if self.since is not None:
            return self._inserted()
        scanned = self.features.dataset(self.version).to_batches(columns=ROW_COLUMNS, batch_size=BLOCK_ROWS)
        return (batch for part in scanned for batch in _with_row_columns(pa.Table.from_batches([part])).to_batches())

    def _inserted(self) -> Iterator[pa.RecordBatch]:
        reader = self.features.changes(self.since + 1, self.version, columns=ROW_COLUMNS)

        def batches() -> Iterator[pa.RecordBatch]:
            for raw in reader:
                batch = pa.Table.from_batches([raw])
                kinds = set(batch.column("_change_type").cast(pa.string()).unique().to_pylist())
                if kinds - {"insert"}:
                    raise ChangedRows(f"rows were changed or deleted since version {self.since}")
                yield from _with_row_columns(batch).to_batches(max_chunksize=BLOCK_ROWS)

        return batches()


def _with_row_columns(table: pa.Table) -> pa.Table:
    """``table`` with :data:`ROW_COLUMNS` only, in that order, strings as plain strings."""
    columns = [table.column(name) for name in ROW_COLUMNS]
    columns = [c.cast(pa.string()) if pa.types.is_string_view(c.type) else c for c in columns]
    return pa.table(dict(zip(ROW_COLUMNS, columns)))


def statistics_and_ids(rows: ArrowRows) -> tuple[Moments, list[str]]:
    """The statistics of ``rows`` (blocks merged pairwise, as the executors merge partitions) and their model ids."""
    total, ids = None, set()
    for batch in rows.batches():
        if batch.num_rows == 0:
            continue
        block = Moments.of_rows(feature_matrix(batch.column("features")))
        total = block if total is None else total.merge(block)
        ids.update(v for v in pc.unique(batch.column("model_id")).to_pylist() if v is not None)
    return (total if total is not None else Moments(0, np.zeros(0), np.zeros((0, 0)))), sorted(ids)


class LocalEngine:
    """The refit's steps in this process (delta-rs + numpy); see :class:`fruits.batch.refit_pca.SparkEngine`."""

    name = "local"

    def __init__(self, home: Home) -> None:
        self.home, self.config = home, home.config
        self.store = home.pca_store

    def compact(self) -> dict:
        return compact_tables_local(self.home)

    def fit(self, last: PcaVersion | None, source_version: int, incremental: bool) -> Fit | None:
        why = None
        if incremental and last is not None:
            fit = self._incremental(last, source_version)
            if isinstance(fit, Fit):
                return fit
            why = fit
        rows = self.rows_at(source_version)
        moments, model_ids = statistics_and_ids(rows)
        if moments.n == 0:
            return None
        if len(model_ids) > 1:
            log.warning("features of version %d come from several models: %s", source_version, model_ids)
        return Fit(moments, model_ids, "full", moments.n, rows, why)

    def _incremental(self, last: PcaVersion, source_version: int) -> Fit | str:
        stored = self.store.statistics(last.version)
        if stored is None:
            return f"v{last.version} has no stored statistics"
        rows = ArrowRows(self.home.features, source_version, since=last.source_version)
        try:
            moments, new_ids = statistics_and_ids(rows)
        except ChangedRows as exc:
            return str(exc)
        except Exception as exc:  # change data feed off for those versions, or log files cleaned up
            return f"change data feed unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
        if not set(new_ids) <= set(last.model_ids):
            return f"model id changed ({last.model_ids} -> {sorted(set(last.model_ids) | set(new_ids))})"
        previous = Moments.from_bytes(stored)
        merged = previous.merge(moments) if moments.n else previous  # no new row: the statistics stand
        return Fit(merged, list(last.model_ids), "incremental", merged.n - previous.n, rows)

    def save_model(self, uri: str, components: np.ndarray, explained: np.ndarray) -> None:
        write_pca_model(self.store.files, uri, components, explained)

    def rows_at(self, version: int) -> ArrowRows:
        return ArrowRows(self.home.features, version)

    def write_all(self, rows: ArrowRows, components: np.ndarray, pca_version: int, source_version: int) -> None:
        """Replace tables/pca's rows with ``rows`` projected (one commit, the schema Spark writes)."""
        self.home.pca.overwrite(self._projected(rows, components, pca_version, source_version), schema_mode="overwrite")

    def append_new(self, rows: ArrowRows, components: np.ndarray, pca_version: int, source_version: int,
                   since_source_version: int) -> None:
        """Add ``rows`` projected, replacing in the same commit rows an interrupted refit left (``replaceWhere``)."""
        self.home.pca.overwrite(self._projected(rows, components, pca_version, source_version),
                                predicate=f"source_version > {int(since_source_version)}")

    @staticmethod
    def _projected(rows: ArrowRows, components: np.ndarray, pca_version: int, source_version: int) -> pa.Table:
        """``pca = features · components`` in float64, as ``PCAModel.transform``, batch by batch (the features are
        streamed; the k floats per row are kept: 80 MB at 1,000,000 rows and k = 20)."""
        schema = PCA.schema
        element = schema.field("pca").type

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in rows.batches():
                points = (feature_matrix(batch.column("features")) @ components).astype(np.float32) \
                    if batch.num_rows else np.zeros((0, components.shape[1]), np.float32)
                offsets = pa.array(np.arange(0, points.size + 1, components.shape[1], dtype=np.int32))
                yield pa.RecordBatch.from_arrays([
                    batch.column("path").cast(pa.string()), batch.column("stored_path").cast(pa.string()),
                    batch.column("label").cast(pa.string()),
                    pa.ListArray.from_arrays(offsets, pa.array(points.ravel(), pa.float32()), type=element),
                    pa.array(np.full(batch.num_rows, pca_version, np.int64)),
                    pa.array(np.full(batch.num_rows, source_version, np.int64)),
                ], schema=schema)

        return pa.Table.from_batches(list(batches()), schema=schema)


def rows_to_read(home: Home, last: PcaVersion | None, incremental: bool) -> int:
    """How many feature rows a refit would read now, from the Delta log's per-file row counts (no data file read):
    every row, or (incremental, after a model) the rows added since that model's fit."""
    actions = home.features.add_actions()
    if actions is None:  # no table: nothing_to_fit says so before this is asked
        return 0
    total = sum(v or 0 for v in actions.column("num_records").to_pylist()) if "num_records" in actions.column_names else 0
    if incremental and last is not None:
        return max(total - last.rows, 0)
    return total


def choose_engine(home: Home, last: PcaVersion | None, incremental: bool) -> tuple[RefitEngine, str]:
    """``("local" | "spark", why)``: ``[pca] engine``, or for ``auto`` the JVM-free path when Spark's master is
    local (a cluster named by ``--master`` is there to be used), the home is a local folder and the rows to read
    are at most ``[pca] local_max_rows``."""
    config = home.config
    settings = config.pca
    if settings.engine != "auto":
        return settings.engine, f"[pca] engine = {settings.engine}"
    if not config.spark.master.startswith("local"):
        return "spark", f"Spark's master is the cluster {config.spark.master}"
    from fruits.home.uris import local_path

    remote = [uri for uri in (config.features_table, config.pca_table, config.pca_models) if local_path(uri) is None]
    if remote:
        return "spark", f"{remote[0]} is not a local folder"
    rows = rows_to_read(home, last, incremental)
    if rows > settings.local_max_rows:
        return "spark", f"{rows} rows to read > [pca] local_max_rows {settings.local_max_rows}"
    return "local", f"{rows} rows to read <= [pca] local_max_rows {settings.local_max_rows}"
