"""``fruits model switch``: move a home to another model, its history featurized again, beside the live stream.

Read top to bottom (:func:`switch_model`):

1. **Record** the new model in the home's registry (:mod:`fruits.home.models`), state ``switching``, with its own
   features table. A switch stopped earlier (Ctrl-C, a kill) is resumed by running the same command again.
2. **Passes.** The active model's rows without a row in the new table (by ``file_id`` and ``attempt``) are
   featurized again from where their originals are now: ``stored_path`` (archived, or kept in landing), else the
   landing path while the stream has not moved the file yet; bytes that do not hash to the row's
   ``content_sha256`` are not that photo. One Spark job (on the executors) and one delta-rs commit per chunk of
   ``[stream] max_files_per_trigger`` rows: a kill loses at most the chunk in flight, and the next run finds what
   is done in the new table, so each photo gets exactly one row per model. The live stream keeps appending to the
   active model's table meanwhile; each pass takes what it added.
3. **Originals that are gone** (``after_ingest = "delete"``, removed by hand) are listed before anything is
   sealed: the switch refuses (:class:`MissingOriginals`) unless told to leave them out (``leave_out_missing``);
   those are recorded with the new model.
4. **Seal** the active model's table once a pass leaves at most a chunk (:meth:`fruits.home.tables.Table.seal`):
   a Delta metadata commit, so the stream's next append fails and the stream waits for the new model. One last
   pass over the sealed version.
5. **Flip**: one replace of the registry makes the new model active; the stream goes on with it, and ``fruits
   identify`` / ``serve`` follow the PCA version fitted on it.
6. **Refit** PCA over the new model's features (a full fit), unless a refit is already running on the home (the
   next one fits the new model).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from fruits.errors import Refused, Stopped
from fruits.home.home import Home
from fruits.home.models import ModelRecord, Registry, now_text
from fruits.home.files import with_attempt
from fruits.home.tables import FEATURES_SCHEMA, Table
from fruits.model.active import ModelToRun, OtherModel, cpu_text, model_id_for, new_record, switch_to
from fruits.model.featurizer import Featurizer
from fruits.model.runtimes import make_featurizer
from fruits.model.udf import featurize_paths, features_list, ship_model_files

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("fruits.model.switch")

KEY = ["file_id", "attempt"]
# Columns of an old row carried to its new row (all but the features). ``stored_path`` too: it says where the stream
# puts the original (archive, landing, or null: deleted), which is not always where the switch happened to read it (a
# file the stream has not moved yet, a move that failed and that the stream's leftovers make later).
CARRIED = [f.name for f in FEATURES_SCHEMA.fields if f.name != "features"]
# Passes that may still find an original "not there yet" (its move to the archive in flight) before it counts as gone.
WAIT_PASSES = 3
WAIT_SECONDS = 1.0


class SwitchStopped(Stopped):
    """The switch was stopped by a signal before it sealed the active model's table: what it featurized is kept, and
    running it again resumes it."""


class MissingOriginals(Refused):
    """Photos of the active model whose originals are gone; ``missing``: ``file_id`` -> path (and why)."""

    def __init__(self, message: str, *, missing: dict[str, str]) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass
class SwitchOutcome:
    """What a switch did: the new model, the rows it featurized (this run), its passes, the photos left out."""

    model: ModelRecord
    featurized: int = 0
    passes: int = 0
    left_out: dict[str, str] = field(default_factory=dict)
    refit: Any = None  # fruits.batch.refit_pca.RefitOutcome, or None when the refit was left to the next one
    seconds: float = 0.0


def switch_model(
    spark: SparkSession, home: Home, target: ModelToRun, *, leave_out_missing: bool = False,
    featurizer: Featurizer | None = None, refit: bool = True, stop: threading.Event | None = None,
) -> SwitchOutcome:
    """Move ``home`` to ``target``'s model (see the module docstring); the caller holds the home's ``model`` lock.
    ``stop`` (set by a signal: :func:`fruits.spark.signals.stop_on_signals`): before the seal, the switch ends after
    the chunk in flight with :class:`SwitchStopped` (run it again to resume); after it, the last pass (at most about a
    chunk) and the flip are finished, so the stream is not left waiting, and the refit is left to the next one.
    ``featurizer``: the new model's runtime (None: the one ``target`` makes), as the stream takes one."""
    started = time.perf_counter()
    home = home.with_spark(spark)
    registry = home.models.load()
    record = _record_switching(home, registry, target)  # refused first if the home has no model yet
    old = registry.active
    featurizer = featurizer or make_featurizer(target.config, target.weights)
    if featurizer.model_id != record.model_id:
        raise OtherModel(f"the featurizer gives {featurizer.model_id}, not the new model's {record.model_id}")
    ship_model_files(spark, featurizer)
    job = _Featurizing(spark, home, featurizer, home.model_features(record), record)
    outcome = SwitchOutcome(record)
    source = home.model_features(old)
    waits: dict[str, int] = {}
    while True:
        sealed = source.sealed_by() == record.number
        if stop is not None and stop.is_set() and not sealed:
            raise SwitchStopped(f"the switch to model {record.number} ({record.model_id}) stopped: {outcome.featurized} "
                                "photos featurized by this run are kept; run the same command again to resume it")
        todo = _todo(source, job.table, outcome.left_out)
        outcome.passes += 1
        log.info("switch pass %d: %d rows of model %d to featurize%s", outcome.passes, todo.num_rows, old.number,
                 " (its table is sealed: the last pass)" if sealed else "")
        done, missing, deleted = job.run(todo, stop=None if sealed else stop)
        outcome.featurized += done - len(missing)
        gone = {file_id: why for file_id, why in missing.items() if _gone(file_id, file_id in deleted, waits)}
        if len(gone) < len(missing):  # some originals may be on their way to the archive: look again shortly
            time.sleep(WAIT_SECONDS)
            continue
        if gone:
            if not leave_out_missing:
                if sealed:
                    source.unseal()
                raise MissingOriginals(_missing_message(gone), missing=gone)
            outcome.left_out.update(gone)
            log.warning("left out %d photos whose originals are gone (recorded with model %d)", len(gone), record.number)
        if sealed:
            break
        if todo.num_rows <= job.chunk_rows:
            log.info("sealing model %d's table (version %d): the stream waits for the last pass",
                     old.number, source.seal(record.number))
    if outcome.left_out:  # listed before the flip: a record that counts them always has its list
        home.models.save_left_out(record.number, outcome.left_out)
    flipped = home.models.load().with_model(replace(record, left_out=len(outcome.left_out))).flipped(record.number)
    home.models.save(flipped)
    log.info("model %d (%s) is now this home's active model; model %d is retired (`fruits model prune` deletes "
             "its table)", record.number, record.model_id, old.number)
    outcome.model = home.models.load().active
    if refit and not (stop is not None and stop.is_set()):
        outcome.refit = _refit(spark, home)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _record_switching(home: Home, registry: Registry, target: ModelToRun) -> ModelRecord:
    """The registry record of the model being switched to: the one a stopped switch left (resumed), or a new one."""
    pending = switch_to(registry, model_id_for(target.config, target.weights))
    if pending is not None:
        log.info("resuming the switch to model %d (%s)", pending.number, pending.model_id)
        return pending
    record = new_record(target, number=registry.next_number(), state="switching", cpu=cpu_text())
    home.models.save(registry.with_model(record))
    log.info("switching to model %d (%s), features in %s", record.number, record.model_id, record.table)
    return record


def _todo(source: Table, target: Table, left_out: dict[str, str]) -> pa.Table:
    """The rows of ``source`` (now) that have no row in ``target`` and are not left out."""
    rows = with_attempt(source.read(CARRIED))
    done = with_attempt(target.read(KEY)) if target.exists() else None
    if done is not None and done.num_rows:
        rows = rows.join(done.select(KEY), keys=KEY, join_type="left anti")
    if left_out:
        rows = rows.filter(pc.invert(pc.is_in(rows.column("file_id"), pa.array(list(left_out), pa.string()))))
    return rows


def _gone(file_id: str, deleted: bool, waits: dict[str, int]) -> bool:
    """Whether a photo not found counts as gone: at once when it was deleted after ingestion, after
    :data:`WAIT_PASSES` passes otherwise (its original may be moving to the archive)."""
    if deleted:
        return True
    waits[file_id] = waits.get(file_id, 0) + 1
    return waits[file_id] >= WAIT_PASSES


def _missing_message(gone: dict[str, str]) -> str:
    shown = "\n".join(f"  {why}" for why in list(gone.values())[:20])
    more = f"\n  ... and {len(gone) - 20} more" if len(gone) > 20 else ""
    return (f"{len(gone)} photos of the active model have no original left to featurize again:\n{shown}{more}\n"
            "run the switch with --leave-out-missing to leave them out (they keep their rows under the old model "
            "until `fruits model prune`)")


class _Featurizing:
    """The switch's job: rows of the old model -> their rows under the new one, a chunk per Spark job and commit."""

    def __init__(self, spark: SparkSession, home: Home, featurizer: Featurizer, table: Table, record: ModelRecord) -> None:
        config = home.config
        self.spark, self.featurizer, self.table, self.record = spark, featurizer, table, record
        self.files = home.spark_files(spark)
        self.chunk_rows = config.stream.max_files_per_trigger
        self.partitions = config.stream.partitions or spark.sparkContext.defaultParallelism
        self.max_pixels = config.model.max_pixels
        table.ensure(spark)

    def run(self, todo: pa.Table, *, stop: threading.Event | None = None) -> tuple[int, dict[str, str], set[str]]:
        """Featurize ``todo`` into the new table, chunk by chunk, until ``stop`` is set; returns how many rows of it
        were tried, those whose original was not found or could not be featurized (``file_id`` -> why), and which of
        them were deleted after ingestion (no ``stored_path``, not in landing either)."""
        missing: dict[str, str] = {}
        done = 0
        self.deleted: set[str] = set()
        self._listed: dict[str, dict[str, int]] = {}  # folder -> {file: size}, listed once per pass
        for start in range(0, todo.num_rows, self.chunk_rows):
            if stop is not None and stop.is_set():
                break
            chunk = todo.slice(start, self.chunk_rows)
            missing.update(self._chunk(chunk))
            done += chunk.num_rows
        return done, missing, self.deleted

    def _size(self, path: str) -> int | None:
        """The size of the file at ``path`` as its folder's listing in this pass saw it, or None if it was not there:
        one listing per folder and pass, not a request per photo (on an object store, a LIST per folder instead of a
        HEAD per photo)."""
        folder = path.rsplit("/", 1)[0]
        if folder not in self._listed:
            self._listed[folder] = {stat.uri: stat.size for stat in self.files.list(folder) if not stat.is_dir}
        return self._listed[folder].get(path)

    def _where(self, row: dict) -> tuple[str | None, str]:
        """Where ``row``'s original is now (None if nowhere), and why not when it is nowhere."""
        candidates = [p for p in dict.fromkeys([row["stored_path"], row["path"]]) if p]
        for path in candidates:
            if self._size(path) == row["size_bytes"]:
                return path, ""
        if row["stored_path"] is None:
            self.deleted.add(row["file_id"])
            return None, f"deleted after ingestion: {row['path']}"
        return None, f"not found at {row['stored_path']} nor {row['path']}"

    def _chunk(self, rows: pa.Table) -> dict[str, str]:
        found: dict[str, int] = {}  # where the original is now -> its row in ``rows``
        missing: dict[str, str] = {}
        file_ids = rows.column("file_id").to_pylist()
        for i, row in enumerate(rows.select(["file_id", "path", "stored_path", "size_bytes"]).to_pylist()):
            path, why = self._where(row)
            if path is None:
                missing[row["file_id"]] = why
            else:
                found[path] = i
        if not found:
            return missing
        sizes = rows.column("size_bytes").to_pylist()
        read = featurize_paths(  # a file larger than the photo it should hold is not read (its hash cannot match)
            self.spark, sorted(found), self.featurizer, max_bytes=max(sizes[i] for i in found.values()),
            max_pixels=self.max_pixels, partitions=self.partitions,
            still_there=lambda p: self.files.stat(p) is not None,
        ).toArrow()
        results = {path: j for j, path in enumerate(read.column("path").to_pylist())}
        hashes, errors = read.column("content_sha256").to_pylist(), pc.struct_field(read.column("result"), "error").to_pylist()
        expected = rows.column("content_sha256").to_pylist()
        taken, picked = [], []
        for path, i in found.items():
            j, file_id = results.get(path), file_ids[i]
            if j is None:
                missing[file_id] = f"not found at {path} when read"
            elif hashes[j] != expected[i]:
                missing[file_id] = f"{path} holds other bytes than the photo featurized (content changed)"
            elif errors[j] is not None:
                missing[file_id] = f"{path}: {errors[j]}"
            else:
                taken.append(i)
                picked.append(j)
        if taken:
            new = rows.take(pa.array(taken, pa.int64()))
            new = new.set_column(new.column_names.index("model_id"), "model_id",
                                 pa.array([self.record.model_id] * len(taken), pa.string()))
            features = features_list(read.column("result").take(pa.array(picked, pa.int64())))
            new = new.append_column("features", features)
            schema = self.table.schema
            self.table.append(pa.Table.from_arrays([new.column(f.name).cast(f.type) for f in schema], schema=schema),
                              metadata={"fruits.switch": str(self.record.number)})
        return missing


def _refit(spark: SparkSession, home: Home):
    """A full refit over the new model's features, unless another refit runs on the home (then the next one fits it)."""
    from fruits.batch.schedule import Refitter, log_outcome
    from fruits.home.locks import LockBusy, exclusive

    config = home.config
    try:
        with exclusive(config, "refit-pca"):
            outcome = Refitter(config, spark=spark)(config.pca.k, config.pca.variance or None, incremental=False)
    except LockBusy:
        log.warning("a refit is running on this home: the next refit fits the new model")
        return None
    log_outcome(outcome)
    return outcome


def abandon_switch(home: Home) -> ModelRecord:
    """Give up the switch under way on ``home`` (the caller holds the ``model`` lock): the active model's table is
    opened to appends again if the switch had sealed it (a waiting stream goes on with the active model), the new
    model's table is deleted, and its record stays as ``abandoned``. Refused when no switch is under way."""
    registry = home.models.load()
    pending, active = registry.switching, registry.active
    if pending is None or active is None:
        raise Refused("no switch is under way on this home: nothing to abandon")
    source = home.model_features(active)
    if source.exists() and source.sealed_by() == pending.number:
        source.unseal()
    home.files.delete(pending.table, recursive=True)
    abandoned = replace(pending, state="abandoned", retired_at=now_text())
    home.models.save(registry.with_model(abandoned))
    log.info("abandoned the switch to model %d (%s): model %d stays active", pending.number, pending.model_id,
             active.number)
    return abandoned


def prune_models(home: Home, *, dry_run: bool = False) -> list[ModelRecord]:
    """Delete the features tables of the home's retired models (their records stay, as ``pruned``); returns them.
    A model the newest PCA version was fitted on is kept until a refit fits the active one (identify answers with
    it meanwhile)."""
    from fruits.batch.refit_pca import fitted_table

    latest = home.pca_store.latest()
    pruned = []
    for record in home.models.load().models:
        if record.state != "retired":
            continue
        if latest is not None and fitted_table(home, latest) == record.table:
            log.warning("model %d is kept: PCA v%d was fitted on it (run `fruits refit-pca` first)", record.number,
                        latest.version)
            continue
        pruned.append(record)
        if not dry_run:
            home.files.delete(record.table, recursive=True)
            home.models.save(home.models.load().with_model(replace(record, state="pruned")))
            log.info("pruned model %d (%s): deleted %s", record.number, record.model_id, record.table)
    return pruned
