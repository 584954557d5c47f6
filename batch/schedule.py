"""``fruits refit-pca --every``: refit now and then periodically, a log line per refit, give up after N failures."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable

from fruits.batch.compaction import describe
from fruits.batch.refit_pca import RefitOutcome, SparkEngine, fitted_here, refit_pca
from fruits.config import Config
from fruits.errors import Failed
from fruits.home.home import Home

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("fruits.refit")


class Refitter:
    """One refit at a time on the engine ``[pca] engine`` chooses for it (:func:`fruits.batch.local_fit.choose_engine`):
    in this process without a JVM, or on Spark, whose session is started the first time a refit needs it
    (``build``) and kept for the next ones."""

    def __init__(self, config: Config, spark: SparkSession | None = None,
                 build: Callable[[], SparkSession] | None = None) -> None:
        self.config, self._spark, self._build = config, spark, build
        self.home = Home.from_config(config)

    def spark(self) -> SparkSession:
        if self._spark is None:
            if self._build is None:
                raise RuntimeError("this refit needs Spark and no session was given")
            self._spark = self._build()
        return self._spark

    def __call__(self, k: int | None, variance: float | None, *, incremental: bool = True) -> RefitOutcome:
        from fruits.batch.local_fit import LocalEngine, choose_engine

        home = self.home.with_spark(self.spark()) if self.home.needs_spark else self.home
        home = home.pinned()  # one features table for the whole refit, even if a switch flips the model
        latest = home.pca_store.latest()
        engine, why = choose_engine(home, latest if fitted_here(home, latest) else None, incremental)
        log.info("refit on %s: %s", "this process (delta-rs + numpy, no JVM)" if engine == "local" else "Spark", why)
        if engine == "local":
            return refit_pca(None, self.config, k, variance, incremental=incremental, engine=LocalEngine(home))
        spark = self.spark()
        home = home.with_spark(spark)
        return refit_pca(spark, self.config, k, variance, incremental=incremental, engine=SparkEngine(spark, home))


def log_outcome(outcome: RefitOutcome) -> None:
    """One line about a refit: the new version's figures, or why it was skipped."""
    compaction = f"; compaction: {describe(outcome.compaction)}" if outcome.compaction else ""
    if outcome.refitted is None:
        log.info("refit skipped: %s%s", outcome.skipped_reason, compaction)
        return
    v = outcome.refitted
    log.info(
        "refit v%d (%s%s): k=%d over %d rows of features version %d (%d new) in %.1f s; explained variance %.3f "
        "(first %.3f); tables/pca: %s, %d rows in v%d coordinates%s",
        v.version, v.method, f", full because {v.fallback_reason}" if v.fallback_reason else "", v.k, v.rows,
        v.source_version, v.new_rows, v.fit_seconds, sum(v.explained_variance), v.explained_variance[0],
        v.projection, v.projected_rows, v.coordinates_version, compaction,
    )


class RefitKeepsFailing(Failed):
    """``refit_every`` gave up after ``failures`` failed refits in a row."""

    def __init__(self, message: str, *, failures: int = 0) -> None:
        super().__init__(message)
        self.failures = failures


def refit_every(
    spark: SparkSession | Refitter,
    config: Config,
    k: int | None,
    variance: float | None,
    every_seconds: float,
    stop: threading.Event,
    max_consecutive_failures: int = 3,
) -> None:
    """Refit now and then every ``every_seconds`` until ``stop`` is set; a refit with no new data is skipped and a
    failed one is logged and tried again at the next period. After ``max_consecutive_failures`` failed refits in a
    row, raises :class:`RefitKeepsFailing` (a failure that lasts is not fixed by waiting: let the orchestrator
    restart the process and alert). ``spark``: a session (the engine is chosen per refit, Spark's being that
    session), or a :class:`Refitter`."""
    refit = spark if isinstance(spark, Refitter) else Refitter(config, spark)
    failures = 0
    while not stop.is_set():
        try:
            log_outcome(refit(k, variance))
            failures = 0
        except Exception as exc:  # a failed refit (storage hiccup, concurrent vacuum, ...) is retried next period
            failures += 1
            if failures >= max_consecutive_failures:
                raise RefitKeepsFailing(
                    f"{failures} refits failed in a row, the last with {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:300] if str(exc) else 'no detail'}",
                    failures=failures,
                ) from exc
            log.exception("refit failed (%d of %d in a row); retrying in %.0f s", failures, max_consecutive_failures, every_seconds)
        stop.wait(every_seconds)
