"""``fruits stream``: landing folder -> file ledger -> MobileNetV2 features -> Delta (features | quarantine).

Read top to bottom: :func:`run_stream` takes the home's stream lock, starts discovery (:mod:`fruits.streaming.discovery`:
file events and listings record every new file version in the ledger, ``tables/files``), then runs
:func:`start_stream`'s query: the ledger as a streaming source (its commits' new rows), each micro-batch written by
:class:`fruits.streaming.sink.OutcomeSink`, which gives every ledger row exactly one outcome row.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager, nullcontext

from pyspark.sql import SparkSession
from pyspark.errors import StreamingQueryException
from pyspark.sql.streaming import StreamingQuery

from fruits.config import Config
from fruits.errors import Failed
from fruits.home.filesystem import HadoopFiles
from fruits.home.home import Home
from fruits.model.active import ModelToRun, model_of_stream, model_to_run
from fruits.model.featurizer import Featurizer
from fruits.home.locks import exclusive
from fruits.home.models import ModelRecord
from fruits.home.tables import TableSealed
from fruits.model.weights import WeightsRef
from fruits.model.runtimes import make_featurizer
from fruits.model.udf import ship_model_files
from fruits.spark.signals import stop_on_signals
from fruits.streaming.discovery import Discovery
from fruits.streaming.ledger_source import LedgerSource
from fruits.streaming.migration import adopt_legacy_rows
from fruits.streaming.progress import Progress
from fruits.streaming.leftovers import Leftovers
from fruits.streaming.retries import Retries
from fruits.streaming.sink import LandedFiles, OutcomeSink, StopRequested

log = logging.getLogger("fruits.stream")


def prepare_home(spark: SparkSession, home: Home) -> None:
    """The landing folder and the three tables, created if missing (with delta-rs: no Spark job); a home older than
    the ledger is adopted."""
    from time import perf_counter

    started = perf_counter()
    home.spark_files(spark).mkdirs(home.landing)
    home.features.ensure(spark)
    home.quarantine.ensure(spark)
    adopt_legacy_rows(spark, home)  # a Spark job only if an outcome table holds rows without a file_id
    home.ledger.ensure(spark)
    log.info("home prepared in %.2f s", perf_counter() - started)  # bench/startup.py's phases


def start_stream(
    spark: SparkSession,
    home: Home,
    weights: WeightsRef,
    progress: Progress,
    *,
    available_now: bool = False,
    stop: threading.Event | None = None,
    retries: Retries | None = None,
    featurizer: Featurizer | None = None,
) -> StreamingQuery:
    """Start the featurizing query over the ledger (discovery must be running); returns the :class:`StreamingQuery`:
    the ledger as a streaming source (:mod:`fruits.streaming.ledger_source`) -> the sink (featurize, append the
    outcomes, archive). ``featurizer``: the model runtime the UDF runs (None: the one ``[model]`` and ``weights``
    make), as Beam's ``RunInference`` takes its ``ModelHandler``."""
    config = home.config
    if featurizer is None:  # [model] runtime/precision; converts the Keras model once if needed
        featurizer = make_featurizer(config, weights)
    log.info("featurizer %s", featurizer.model_id)
    ship_model_files(spark, featurizer)
    spark.dataSource.register(LedgerSource)
    ledger = spark.readStream.format(LedgerSource.name()).options(**LedgerSource.options_for(home.ledger)).load()
    writer = (
        ledger.writeStream.queryName(config.stream.query_name)
        .option("checkpointLocation", config.checkpoint("ingest"))
        .foreachBatch(build_sink(spark, home, featurizer, progress, stop, retries))
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{round(config.stream.trigger * 1000)} milliseconds")
    return writer.start()


def build_sink(
    spark: SparkSession,
    home: Home,
    featurizer: Featurizer,
    progress: Progress,
    stop: threading.Event | None,
    retries: Retries | None = None,
) -> OutcomeSink:
    """The ``foreachBatch`` sink for ``home`` and its settings; it hands retryable verdicts to ``retries``."""
    config = home.config
    qualify = HadoopFiles(spark).qualify
    return OutcomeSink(
        features_table=home.features,
        quarantine_table=home.quarantine,
        landing=qualify(config.landing),
        archive=qualify(config.archive),
        quarantine=qualify(config.quarantine),
        after_ingest=config.discovery.after_ingest,
        allow_overwrites=config.discovery.allow_overwrites,
        chunk_rows=config.stream.max_files_per_trigger,
        partitions=config.stream.partitions or spark.sparkContext.defaultParallelism,
        featurizer=featurizer,
        max_bytes=config.model.max_bytes,
        max_pixels=config.model.max_pixels,
        progress=progress,
        max_retries=config.stream.max_retries,
        writers=config.writers,
        writer_timeout=config.discovery.writer_timeout,
        on_retryable=retries.watch if retries is not None else None,
        stop_requested=stop,
        files=home.spark_files(spark),
    )


def run_stream(
    spark: SparkSession,
    config: Config,
    weights: WeightsRef,
    *,
    available_now: bool = False,
    stop: threading.Event | None = None,
    lock_held: bool = False,
    featurizer: Featurizer | None = None,
    chosen: dict | None = None,
) -> int:
    """Run the stream until it ends (``available_now``: what has landed by now), ``stop`` is set, or SIGTERM /
    SIGINT stops it (between two chunks: see :func:`_await`); returns how many files it gave an outcome. Refuses to
    start (:class:`fruits.home.locks.LockBusy`) while another stream runs on the home, unless the caller holds the home's
    stream lock (``lock_held``). ``featurizer``: see :func:`start_stream`.

    ``config``'s model must be the home's active one (:mod:`fruits.model.active`; the first stream of a home records
    it, ``chosen`` saying how its precision was chosen). When ``fruits model switch`` replaces it, the sink finds its
    features table sealed: the stream waits for the switch to make the new model active, then goes on with it."""
    home = Home.from_config(config).with_spark(spark)  # the stream's one Home: its parts share its locations
    with nullcontext() if lock_held else exclusive(config, "stream"), stop_on_signals(stop) as stop:
        home_files = home.spark_files(spark)
        landing = HadoopFiles(spark).qualify(config.landing)  # as Spark spells it (its default file system decides)
        files = LandedFiles(home_files)
        leftovers = Leftovers(home, files)
        discovery = Discovery(home, landing, home_files, after_listing=leftovers.submit)
        progress = Progress(home_files, config.stream_progress)
        retries = Retries(home, files.present, files=home_files)
        try:
            prepare_home(spark, home)
            featurizer = featurizer or make_featurizer(config, weights)
            model = model_of_stream(home, ModelToRun(config, weights, None, dict(chosen or {})), featurizer.model_id)
            files.sweep(landing)  # read aliases a stopped stream left
            discovery.start(continuous=not available_now)  # one listing first: an available-now run sees it all
            if retries.load():
                log.info("%d quarantined files will be tried again", len(retries))
                retries.tick()  # those due now (e.g. files that appeared while no stream ran): this run takes them
            if not available_now:
                retries.start()
            while True:
                query = start_stream(
                    spark, home, weights, progress, available_now=available_now, stop=stop, retries=retries,
                    featurizer=featurizer,
                )
                log.info("stream %s watching %s with model %d (checkpoint %s)", query.name, config.landing,
                         model.number, config.checkpoint("ingest"))
                _await(spark, query, stop, progress)
                if progress.sealed_by is None:
                    return progress.files
                model = _wait_for_switch(home, model, stop)
                if model is None:  # stopped while waiting
                    return progress.files
                progress.sealed_by, featurizer = None, None
                run = model_to_run(home)
                home, weights = run.home.with_spark(spark), run.weights
        finally:
            retries.stop()
            discovery.stop()
            leftovers.stop()


# How often a stream whose features table a switch sealed looks whether the switch made the new model active.
SWITCH_POLL_SECONDS = 0.5


def _wait_for_switch(home: Home, model: ModelRecord, stop: threading.Event) -> ModelRecord | None:
    """The model that replaced ``model`` once ``fruits model switch`` made it active (its last rows are being
    featurized meanwhile), ``model`` itself if the switch was abandoned (its table open again), or None if ``stop``
    was set first."""
    log.info("model %d's features table is sealed: `fruits model switch` is finishing; waiting for it", model.number)
    waited, table = 0.0, home.model_features(model)
    while not stop.wait(SWITCH_POLL_SECONDS):
        active = home.models.load().active
        if active is not None and active.number != model.number:
            log.info("model %d is now active (%s): the stream goes on with it", active.number, active.model_id)
            return active
        if table.sealed_by() is None:
            log.info("the switch away from model %d was abandoned: the stream goes on with it", model.number)
            return model
        waited += SWITCH_POLL_SECONDS
        if waited % 60 < SWITCH_POLL_SECONDS:
            log.warning("still waiting for the switch away from model %d (%.0f s): if `fruits model switch` was "
                        "stopped, run it again to finish it (or give it up: `fruits model switch --abandon`)",
                        model.number, waited)
    return None


class StreamFailed(Failed):
    """The query ended with an error that is not a requested stop."""


# Spark's loggers kept quiet while the stream runs: the query's end with an error is Spark's ERROR with the sink's
# Python traceback (for the micro-batch the sink ends at a stop too), told instead by one line or by StreamFailed;
# query.stop() between two micro-batches warns that it found no job to cancel; and every micro-batch of a backlog
# takes longer than the trigger interval, which Spark warns of each time ("falling behind": the sink's batch lines
# say the rate instead). (py4j's own log of the sink's StopRequested is dropped too, by its type: every other
# exception of the sink is still logged.)
QUIET_WHILE_STREAMING = {
    "org.apache.spark.sql.execution.streaming.runtime.MicroBatchExecution": "OFF",
    "org.apache.spark.scheduler.DAGScheduler": "ERROR",
    "org.apache.spark.sql.execution.streaming.runtime.ProcessingTimeExecutor": "ERROR",
}


def _await(spark: SparkSession, query: StreamingQuery, stop: threading.Event, progress: Progress) -> None:
    """Wait for ``query`` to end, or for ``stop``. Once ``stop`` is set, the chunk in flight is finished: the sink
    ends its micro-batch before the next chunk (:class:`fruits.streaming.sink.StopRequested`, recorded in
    ``progress``), and a query between two micro-batches is stopped here; the checkpoint keeps the unfinished
    micro-batch for the next start. Raises :class:`StreamFailed` if the query ended any other way with an error."""
    told = False
    with _log_levels(spark, QUIET_WHILE_STREAMING), _filtered(logging.getLogger("py4j.clientserver"), _not_a_stop):
        while query.isActive:
            if stop.is_set():
                told = told or _tell_stop()
                if not query.status["isTriggerActive"]:
                    query.stop()  # between micro-batches: nothing to finish
                    break
            try:
                query.awaitTermination(0.5)
            except StreamingQueryException:
                break  # judged below
    if stop.is_set() and not told:  # the sink saw it first
        _tell_stop()
    failure = query.exception()
    if failure is not None and progress.sealed_by is None and not (stop.is_set() and progress.stopped_in is not None):
        # Spark's text goes on with the query's plan and the cause's stack: all of it to the log, its first line to
        # the error (README: an error prints one line).
        log.error("the stream's query failed: %s", failure)
        raise StreamFailed(f"stream failed: {(str(failure).strip().splitlines() or [type(failure).__name__])[0]}")


def _tell_stop() -> bool:
    log.info("stop requested: stopping after the chunk in flight (signal again to exit at once); the next start "
             "resumes from the checkpoint")
    return True


def _not_a_stop(record: logging.LogRecord) -> bool:
    """False for py4j's log of the exception a ``foreachBatch`` call raised when it is the sink's StopRequested."""
    return not (record.exc_info and isinstance(record.exc_info[1], (StopRequested, TableSealed)))


@contextmanager
def _filtered(logger: logging.Logger, keep):
    """``logger`` drops the records ``keep`` says False to, for the block."""
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


@contextmanager
def _log_levels(spark: SparkSession, levels: dict[str, str]):
    """Spark's (log4j) loggers at ``levels`` for the block, then back at their own."""
    log4j = spark.sparkContext._jvm.org.apache.logging.log4j
    previous = {name: log4j.LogManager.getLogger(name).getLevel().toString() for name in levels}
    for name, level in levels.items():
        log4j.core.config.Configurator.setLevel(name, log4j.Level.toLevel(level))
    try:
        yield
    finally:
        for name, level in previous.items():
            log4j.core.config.Configurator.setLevel(name, log4j.Level.toLevel(level))
