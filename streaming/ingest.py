"""``fruits stream``: landing folder -> file ledger -> MobileNetV2 features -> Delta (features | quarantine).

Read top to bottom: :func:`run_stream` takes the home's stream lock, starts discovery (:mod:`fruits.streaming.discovery`:
file events and listings record every new file version in the ledger, ``tables/files``), then runs
:func:`start_stream`'s query: the ledger as a streaming source (its commits' new rows), each micro-batch written by
:class:`fruits.streaming.sink.OutcomeSink`, which gives every ledger row exactly one outcome row.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager, nullcontext

from pyspark.sql import SparkSession
from pyspark.errors import StreamingQueryException
from pyspark.sql.streaming import StreamingQuery

from fruits import storage
from fruits.config import Config
from fruits.featurizer import Featurizer
from fruits.ledger import ensure_ledger
from fruits.locks import exclusive
from fruits.model import WeightsRef
from fruits.runtimes import make_handler
from fruits.tables import FEATURES_SCHEMA, QUARANTINE_SCHEMA, ensure_table
from fruits.streaming.discovery import Discovery
from fruits.streaming.ledger_source import LedgerSource
from fruits.streaming.migration import adopt_legacy_rows
from fruits.streaming.progress import Progress
from fruits.streaming.sink import OutcomeSink, StopRequested

log = logging.getLogger("fruits.stream")


def prepare_home(spark: SparkSession, config: Config) -> None:
    """The landing folder and the three tables, created if missing (with delta-rs: no Spark job); a home older than
    the ledger is adopted."""
    from time import perf_counter

    started = perf_counter()
    storage.mkdirs(spark, config.landing)
    made = [
        ensure_table(spark, config.features_table, FEATURES_SCHEMA, "MobileNetV2 features of landed images", change_feed=True),
        ensure_table(spark, config.quarantine_table, QUARANTINE_SCHEMA, "Landed files that could not be featurized"),
    ]
    if all(made):  # a new home has no outcome row to adopt: the ledger first spares the adoption's Spark jobs
        ensure_ledger(config.files_table)
    adopt_legacy_rows(spark, config)
    ensure_ledger(config.files_table)
    log.info("home prepared in %.2f s", perf_counter() - started)  # bench/startup.py's phases


def start_stream(
    spark: SparkSession,
    config: Config,
    weights: WeightsRef,
    progress: Progress,
    available_now: bool = False,
    stop: threading.Event | None = None,
) -> StreamingQuery:
    """Start the featurizing query over the ledger (discovery must be running); returns the :class:`StreamingQuery`:
    the ledger as a streaming source (:mod:`fruits.streaming.ledger_source`) -> the sink (featurize, append the
    outcomes, archive)."""
    handler = make_handler(config, weights)  # [model] runtime/precision; converts the Keras model once if needed
    log.info("featurizer %s", handler.model_id)
    ship_model_files(spark, handler)
    spark.dataSource.register(LedgerSource)
    ledger = spark.readStream.format(LedgerSource.name()).option("path", config.files_table).load()
    writer = (
        ledger.writeStream.queryName(config.stream.query_name)
        .option("checkpointLocation", config.checkpoint("ingest"))
        .foreachBatch(build_sink(spark, config, handler, progress, stop))
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{round(config.stream.trigger * 1000)} milliseconds")
    return writer.start()


def ship_model_files(spark: SparkSession, handler: Featurizer) -> None:
    """Weights or IR files of ``handler`` to the executors (``SparkContext.addFile``, once per application):
    executors on other machines read their copy through SparkFiles."""
    for path in handler.files:
        if not any(added.endswith("/" + os.path.basename(path)) for added in spark.sparkContext.listFiles):
            spark.sparkContext.addFile(path)


def build_sink(
    spark: SparkSession, config: Config, handler: Featurizer, progress: Progress, stop: threading.Event | None
) -> OutcomeSink:
    """The ``foreachBatch`` sink for ``config``'s home and settings."""
    return OutcomeSink(
        features_table=config.features_table,
        quarantine_table=config.quarantine_table,
        landing=storage.qualify(spark, config.landing),
        archive=storage.qualify(spark, config.archive),
        after_ingest=config.discovery.after_ingest,
        allow_overwrites=config.discovery.allow_overwrites,
        chunk_rows=config.stream.max_files_per_trigger,
        partitions=config.stream.partitions or spark.sparkContext.defaultParallelism,
        handler=handler,
        max_bytes=config.model.max_bytes,
        max_pixels=config.model.max_pixels,
        progress=progress,
        crash_marker=config.testing.crash_worker_on_bytes.encode(),
        stop_requested=stop,
    )


def run_stream(
    spark: SparkSession,
    config: Config,
    weights: WeightsRef,
    available_now: bool = False,
    stop: threading.Event | None = None,
    lock_held: bool = False,
) -> int:
    """Run the stream until it ends (``available_now``: what has landed by now), ``stop`` is set, or SIGTERM /
    Ctrl-C stops it; returns how many files it gave an outcome. Refuses to start (:class:`fruits.locks.LockBusy`)
    while another stream runs on the home, unless the caller holds the home's stream lock (``lock_held``)."""
    with nullcontext() if lock_held else exclusive(config, "stream"), _stop_on_signals(stop) as stop:
        discovery = Discovery(config, storage.qualify(spark, config.landing), spark)
        progress = Progress(spark, config.stream_progress)
        try:
            prepare_home(spark, config)
            discovery.start(continuous=not available_now)  # one listing first: an available-now run sees it all
            query = start_stream(spark, config, weights, progress, available_now, stop)
            log.info("stream %s watching %s (checkpoint %s)", query.name, config.landing, config.checkpoint("ingest"))
            _await(query, stop)
            return progress.files
        finally:
            discovery.stop()


def _await(query: StreamingQuery, stop: threading.Event) -> None:
    """Wait for ``query`` to end or for ``stop``; raise if it failed."""
    try:
        while query.isActive and not stop.is_set():
            try:
                query.awaitTermination(0.5)
            except StreamingQueryException as exc:  # the sink ended the batch because a stop was requested
                if not (stop.is_set() and StopRequested.__name__ in str(exc)):
                    raise
    finally:
        if stop.is_set():
            log.info("stop requested: stopping the stream (the checkpoint keeps its place)")
        if query.isActive:
            query.stop()
    failure = query.exception()
    if failure is not None and not (stop.is_set() and StopRequested.__name__ in str(failure)):
        raise RuntimeError(f"stream failed: {failure}")


@contextmanager
def _stop_on_signals(stop: threading.Event | None = None):
    """``stop`` (or a new event), also set by SIGTERM / SIGINT while the block runs in the main thread."""
    stop, previous = stop or threading.Event(), {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
