"""``fruits refit-pca``: PCA over the features table at a pinned Delta version, read top to bottom.

1. Skip at once (no Spark job) when the features table has no version newer than the last model's source.
2. Compact the features, quarantine and ledger tables when they hold enough small files (:mod:`.compaction`),
   before the version is pinned: the fit then reads the compacted files, and the ``OPTIMIZE`` commit is part of the
   pinned version (made after the fit, it would look like new data to the next refit). The stream may keep
   appending meanwhile: its blind appends do not conflict with ``OPTIMIZE``.
3. Fit (:mod:`.pca_fit`): the statistics of the new rows merged with the stored ones (incremental), or of every
   row (full); their exact eigendecomposition; ``k`` as given or from ``--variance``.
4. Write the model version (:class:`fruits.home.pca_store.PcaModelStore`): Spark ML model, components, statistics.
5. Write ``tables/pca`` (:mod:`.pca_table`): the new rows appended in the table's coordinates version, or every row
   projected again.
6. Plots (:mod:`.plots`), then the version's metadata, last: a version without it is an interrupted refit, redone
   by the next one.

Steps 2 to 5 run on an *engine*: :class:`SparkEngine` (Spark, for large homes and clusters) or
:class:`fruits.batch.local_fit.LocalEngine` (delta-rs and numpy in this process, no JVM), which write the same
statistics, model store and tables/pca; ``[pca] engine`` and ``local_max_rows`` choose (:func:`.local_fit.choose_engine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fruits.batch.pca_fit import Fit, choose_k
from fruits.batch.pca_table import Projection, choose_projection, sample_points
from fruits.batch.plots import SCATTER_SAMPLE, explained_variance_plot, scatter_plot
from fruits.config import Config, RefitEngine
from fruits.home.home import Home
from fruits.home.pca_store import PcaModelStore, PcaVersion
from fruits.timing import Phases

if TYPE_CHECKING:  # Spark is imported by the Spark engine only: the local one starts no JVM
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class RefitOutcome:
    """A refit's result: the new version, or why none was made."""

    refitted: PcaVersion | None
    skipped_reason: str | None = None
    compaction: dict = field(default_factory=dict)


def nothing_to_fit(home: Home, last: PcaVersion | None) -> str | None:
    """Why no refit is needed — no features table yet, or no version newer than ``last``'s source — read from the
    Delta log without Spark (``fruits refit-pca`` asks before it starts the JVM), or None."""
    version = home.features.version()
    if version is None:
        return f"no features table at {home.features_table} yet"
    if fitted_here(home, last) and last.source_version == version:
        return f"features table is still at version {version}, already fitted by v{last.version}"
    return None


def fitted_table(home: Home, version: PcaVersion) -> str:
    """The features table ``version`` was fitted on (metadata older than model switches: the first model's)."""
    return version.features_table or home.config.features_table


def fitted_here(home: Home, last: PcaVersion | None) -> bool:
    """Whether ``last`` was fitted on ``home``'s features table (the active model's); not after a model switch, when
    the next refit fits every row of the new model's table."""
    return last is not None and fitted_table(home, last) == home.features_table


class Engine(Protocol):
    """Where a refit's steps 2 to 5 run; both engines write the same files and tables."""

    name: RefitEngine
    home: Home
    store: PcaModelStore

    def compact(self) -> dict: ...
    def fit(self, last: PcaVersion | None, source_version: int, incremental: bool) -> Fit | None: ...
    def save_model(self, uri: str, components: np.ndarray, explained: np.ndarray) -> None: ...
    def rows_at(self, version: int) -> Any: ...
    def write_all(self, rows: Any, components: np.ndarray, pca_version: int, source_version: int) -> None: ...
    def append_new(self, rows: Any, components: np.ndarray, pca_version: int, source_version: int,
                   since_source_version: int) -> None: ...


class SparkEngine:
    """The refit's steps on Spark (executors; a cluster's when the session has one)."""

    name = "spark"

    def __init__(self, spark: SparkSession, home: Home) -> None:
        self.spark, self.home = spark, home
        # written through Hadoop, as Spark writes the model itself: the cluster's credentials
        self.store = PcaModelStore(home.pca_models, home.spark_files(spark))

    def compact(self) -> dict:
        from fruits.batch.compaction import compact_tables

        return compact_tables(self.spark, self.home)

    def fit(self, last: PcaVersion | None, source_version: int, incremental: bool) -> Fit | None:
        from fruits.batch.pca_fit import fit_pca

        return fit_pca(self.spark, self.home.features, self.store, last, source_version, incremental)

    def save_model(self, uri: str, components: np.ndarray, explained: np.ndarray) -> None:
        from fruits.batch.pca_fit import pca_model

        pca_model(self.spark, components, explained).write().overwrite().save(uri)

    def rows_at(self, version: int):
        from fruits.batch.pca_fit import rows_at

        return rows_at(self.spark, self.home.features, version)

    def write_all(self, rows, components: np.ndarray, pca_version: int, source_version: int) -> None:
        from fruits.batch.pca_table import project, write_all

        write_all(project(rows, components, pca_version, source_version), self.home.pca)

    def append_new(self, rows, components: np.ndarray, pca_version: int, source_version: int,
                   since_source_version: int) -> None:
        from fruits.batch.pca_table import append_new, project

        append_new(project(rows, components, pca_version, source_version), self.home.pca, since_source_version)


def refit_pca(
    spark: SparkSession | None, config: Config, k: int | None = 20, variance: float | None = None, *,
    incremental: bool = True, engine: Engine | None = None,
) -> RefitOutcome:
    """Fit PCA on the features table's current version; write the model version, ``tables/pca`` and the plots. On
    ``engine``, else on Spark (``spark``)."""
    engine = engine or SparkEngine(spark, Home.from_config(config).with_spark(spark).pinned())
    home, store = engine.home, engine.store
    latest = store.latest()
    last = latest if fitted_here(home, latest) else None  # another model's PCA: nothing to build on
    skipped = nothing_to_fit(home, latest)
    if skipped:
        return RefitOutcome(None, skipped)
    steps = Phases()
    with steps.timed("compaction"):
        compaction = engine.compact()
    source_version = home.features.version()  # pinned: what the stream commits later waits
    with steps.timed("statistics"):
        fit = engine.fit(last, source_version, incremental)
    if fit is None:
        return RefitOutcome(None, f"features table version {source_version} has no rows", compaction)
    try:
        version = latest.version + 1 if latest else 1
        record = _write_version(engine, config, last, fit, version, source_version, (k, variance), steps, compaction)
    finally:
        fit.release()
    return RefitOutcome(record, compaction=compaction)


def refit_pca_local(
    config: Config, k: int | None = 20, variance: float | None = None, *, incremental: bool = True
) -> RefitOutcome:
    """:func:`refit_pca` without a JVM (:class:`fruits.batch.local_fit.LocalEngine`)."""
    from fruits.batch.local_fit import LocalEngine

    return refit_pca(None, config, k, variance, incremental=incremental, engine=LocalEngine(Home.from_config(config).pinned()))


def _write_version(
    engine: Engine, config: Config, last: PcaVersion | None, fit: Fit, version: int, source_version: int,
    k_rule: tuple[int | None, float | None], steps: Phases, compaction: dict,
) -> PcaVersion:
    """Steps 3 (eigendecomposition) to 6 of the module docstring, for the statistics of ``fit``, as ``version``."""
    store = engine.store
    with steps.timed("eigendecomposition"):
        components, ratios = fit.moments.principal_components()
        chosen, rule = choose_k(ratios, *k_rule)
        kept, explained = components[:, :chosen], ratios[:chosen]
    with steps.timed("model"):
        engine.save_model(store.spark_model_path(version), kept, explained)
        store.write_arrays(version, kept, fit.moments.to_bytes())
    with steps.timed("projection"):
        projection, written = _write_projection(engine, config, last, fit, version, source_version, kept)
    with steps.timed("plots"):
        plots = _write_plots(store, engine.home, version, ratios, explained, projection.coordinates_version)
    record = PcaVersion(
        version=version, k=chosen, explained_variance=[float(v) for v in explained], rows=fit.moments.n,
        source_version=source_version, fit_seconds=round(steps.seconds["statistics"] + steps.seconds["eigendecomposition"], 3),
        fitted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), model_path=store.spark_model_path(version),
        model_ids=fit.model_ids, method=fit.method, k_rule=rule, new_rows=fit.new_rows, fallback_reason=fit.fallback_reason,
        plots=plots, compaction=compaction, projection_version=projection.coordinates_version,
        projection=f"{'all rows' if projection.all_rows else 'new rows'} ({projection.why})", projected_rows=written,
        timings={name: round(seconds, 3) for name, seconds in steps.seconds.items()}, engine=engine.name,
        features_table=engine.home.features_table,
    )
    store.commit(record)
    return record


def _write_projection(
    engine: Engine, config: Config, last: PcaVersion | None, fit: Fit, version: int, source_version: int,
    kept: np.ndarray,
) -> tuple[Projection, int]:
    """Every row projected with ``kept`` (the new version's components), or the new rows appended in the table's
    coordinates version (:mod:`.pca_table`); and how many rows were written."""
    store, basis = engine.store, None
    if last is not None:
        basis = last if last.coordinates_version == last.version else store.version(last.coordinates_version)
    growth = config.pca.reproject_growth
    choice = choose_projection(engine.home.pca, version, basis, fit.method, fit.moments.n, growth)
    if choice.all_rows:
        rows = fit.rows if fit.method == "full" else engine.rows_at(source_version)
        engine.write_all(rows, kept, version, source_version)
        return choice, fit.moments.n
    components = store.components(choice.coordinates_version)
    engine.append_new(fit.rows, components, choice.coordinates_version, source_version, last.source_version)
    return choice, fit.new_rows


def _write_plots(
    store: PcaModelStore, home: Home, version: int, ratios: np.ndarray, explained: np.ndarray, coordinates: int
) -> list[str]:
    """The explained-variance curve and the PC1/PC2 scatter of a sample of tables/pca, into the version's folder."""
    labels, points, total = sample_points(home.pca, coordinates, SCATTER_SAMPLE)
    plots = {
        "explained-variance.png": explained_variance_plot(ratios, [float(v) for v in explained]),
        "pc1-pc2.png": scatter_plot(labels, points, total, coordinates),
    }
    for name, png in plots.items():
        store.write_plot(version, name, png)
    return list(plots)
