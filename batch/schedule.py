"""``fruits refit-pca --every``: refit now and then periodically, a log line per refit, give up after N failures."""

from __future__ import annotations

import logging
import threading

from pyspark.sql import SparkSession

from fruits.batch.compaction import describe
from fruits.batch.refit_pca import RefitOutcome, refit_pca
from fruits.config import Config

log = logging.getLogger("fruits.refit")


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


class RefitKeepsFailing(RuntimeError):
    """``refit_every`` gave up after too many failed refits in a row."""


def refit_every(
    spark: SparkSession,
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
    restart the process and alert)."""
    failures = 0
    while not stop.is_set():
        try:
            log_outcome(refit_pca(spark, config, k, variance))
            failures = 0
        except Exception as exc:  # a failed refit (storage hiccup, concurrent vacuum, ...) is retried next period
            failures += 1
            if failures >= max_consecutive_failures:
                raise RefitKeepsFailing(
                    f"{failures} refits failed in a row, the last with {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:300] if str(exc) else 'no detail'}"
                ) from exc
            log.exception("refit failed (%d of %d in a row); retrying in %.0f s", failures, max_consecutive_failures, every_seconds)
        stop.wait(every_seconds)
