"""``tables/pca``: every feature row projected with a PCA model version, ``pca = features · components`` (as Spark
ML's ``PCAModel.transform``: no centring), with the version it is in (``pca_version``) and the features version the
refit that wrote it was pinned to (``source_version``).

A refit does not project every row again each time: after an incremental fit, the rows added since the last refit
are **appended**, projected with the components the table is already in (the *coordinates version*, recorded as
``projection_version`` in each model version's metadata), so every row of the table stays in one version and
readers compare like with like. Every row is projected again (the table overwritten, in the new version) after a
full fit, when the rows added since the coordinates version was fitted exceed ``[pca] reproject_growth`` of all
rows, or when the table does not hold exactly that version's rows (an interrupted refit). Readers (``fruits
identify``, the web page) take the coordinates version from the newest metadata, and its components from the store.

The append is a Delta ``replaceWhere source_version > S`` (S: the last refit's source version), in one commit: rows
a killed refit appended are replaced, never doubled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from fruits.home.pca_store import FitMethod, PcaVersion
from fruits.home.tables import PCA_SCHEMA, Table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class Projection:
    """What a refit writes to tables/pca: every row, or the new rows only; in which version's coordinates."""

    coordinates_version: int
    all_rows: bool
    why: str


def project(rows: DataFrame, components: np.ndarray, pca_version: int, source_version: int) -> DataFrame:
    """``rows`` (path, stored_path, label, features) as rows of tables/pca, projected with ``components`` (d, k)."""

    def per_batch(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            features = np.stack(batch["features"].to_numpy()) if len(batch) else np.zeros((0, components.shape[0]))
            points = (features.astype(np.float64) @ components).astype(np.float32)
            yield pd.DataFrame({
                "path": batch["path"].to_numpy(), "stored_path": batch["stored_path"].to_numpy(),
                "label": batch["label"].to_numpy(),
                "pca": list(points), "pca_version": pca_version, "source_version": source_version,
            })

    return rows.select("path", "stored_path", "label", "features").mapInPandas(per_batch, PCA_SCHEMA)


def choose_projection(pca: Table, version: int, basis: PcaVersion | None, method: FitMethod, rows: int,
                      growth: float) -> Projection:
    """Whether refit ``version`` (``rows`` rows, fitted by ``method``) appends its new rows in the coordinates of
    ``basis`` (the last version's coordinates version, None if there is none) or projects every row again."""
    if method == "full" or basis is None:
        return Projection(version, True, "full fit" if method == "full" else "no earlier coordinates version")
    added = rows - basis.rows
    if added > growth * rows:
        return Projection(version, True, f"{added} rows added since v{basis.version} > {growth:g} of {rows}")
    held = versions_held(pca)
    if held != {basis.version}:
        return Projection(version, True, f"the table holds versions {sorted(held, key=str)}, not only v{basis.version}")
    return Projection(basis.version, False, f"{added} rows added since v{basis.version} <= reproject_growth {growth}")


def versions_held(pca: Table) -> set[int | None]:
    """The ``pca_version`` values of the table's rows, from the per-file statistics in its Delta log (no data file
    is read); None stands for a file without statistics."""
    actions = pca.add_actions()
    if actions is None:
        return set()
    names = actions.schema.names
    if "min.pca_version" not in names or "max.pca_version" not in names:
        return {None} if actions.num_rows else set()
    low, high = actions.column("min.pca_version").to_pylist(), actions.column("max.pca_version").to_pylist()
    return {a if a == b else None for a, b in zip(low, high)}


def write_all(projected: DataFrame, pca: Table) -> None:
    """Replace the table's rows with ``projected`` (one commit; earlier versions stay readable by time travel)."""
    pca.write_frame(projected, mode="overwrite", overwrite_schema=True)


def append_new(projected: DataFrame, pca: Table, since_source_version: int) -> None:
    """Add ``projected`` (rows with ``source_version`` > ``since_source_version``), replacing in the same commit
    any such rows an interrupted refit left."""
    pca.write_frame(projected, mode="overwrite", replace_where=f"source_version > {int(since_source_version)}")


def sample_points(pca: Table, version: int, limit: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, int]:
    """Up to ``limit`` rows of ``version`` in the table, drawn at random: (labels, (n, k) points, rows of version)."""
    table = pca.read(["label", "pca"], filter=pc.field("pca_version") == version)
    total = table.num_rows
    if total > limit:
        table = table.take(np.sort(np.random.default_rng(seed).choice(total, limit, replace=False)))
    labels = np.array(["(none)" if v is None else v for v in table.column("label").to_pylist()], dtype=object)
    points = np.array(table.column("pca").to_pylist(), dtype=np.float32).reshape(table.num_rows, -1)
    return labels, points, total
