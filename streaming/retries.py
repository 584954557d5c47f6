"""The stream's own retries: quarantine verdicts that may pass are tried again, exactly once per attempt.

The sink hands every retryable quarantine row to :class:`Retries` (:attr:`OutcomeSink.on_retryable`); at start-up
the current retryable rows of the quarantine table are loaded, so a restart forgets none. A thread then records the
next attempt of a file version in the ledger (:func:`fruits.home.ledger.record_retries`) when it is due, and the stream
reads it like any other ledger row:

- ``transient`` (its job failed with it alone): after ``[stream] retry_backoff``, doubled at each attempt, up to
  ``[stream] max_retries`` (the sink marks the last verdict not retryable); read again from where it is kept;
- ``waiting`` (its writer has not made it appear yet): as soon as the file is there, or its writer stopped
  heartbeating (then the next verdict is ``missing``);
- ``missing`` (not there when read): as soon as the file is there again.

A retry recorded twice (two processes, or a replay) asks for the same (file version, attempt): it gets one outcome.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from fruits.home.files import OutcomeKind, newest_per_file, with_attempt
from fruits.home.filesystem import FileSystem
from fruits.home.home import Home
from fruits.home.ledger import record_retries
from fruits.home.tables import Table
from fruits.home.verdicts import Cause, backoff_seconds
from fruits.landing.writers import writer_alive

log = logging.getLogger("fruits.retries")

# A missing file is looked for this often; a waiting one (its writer uploads now) at every tick.
MISSING_CHECK_SECONDS = 5.0
TICK_SECONDS = 0.5
# Ledger columns a retry copies from the row it retries (the rest it sets).
RETRY_COLUMNS = ["file_id", "path", "label", "size_bytes", "modified_at", "overwrites", "writer", "raw_path", "attempt"]
# Ledger columns the outcome rows do not carry, read from the ledger for rows loaded at start-up.
FROM_LEDGER_ONLY = ("writer", "raw_path")


@dataclass
class Watched:
    """A file version whose current outcome is a retryable quarantine row."""

    row: dict  # RETRY_COLUMNS, ``attempt`` being that of the quarantine row
    cause: Cause
    stored_path: str | None
    due: float  # clock time of the next look


class Retries:
    """Records the next attempt of retryable quarantined files when due; see the module docstring. ``present`` tells
    the ``path`` of those of some ledger rows whose file is there now (the stream's file system); ``clock`` is a
    test seam (seconds, like :func:`time.time`); ``files`` the home's file system, where writers heartbeat."""

    def __init__(
        self, home: Home, present: Callable[[list[dict]], set[str]], *, clock: Callable[[], float] = time.time,
        files: FileSystem | None = None,
    ) -> None:
        self.home, self.config = home, home.config
        self.present = present
        self.files = files or home.files
        self.clock = clock
        self.backoff = self.config.stream.retry_backoff
        self.ledger = home.ledger  # kept: each retry's commit reads no log again
        self._watched: dict[str, Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._watched)

    def load(self) -> int:
        """Watch the current retryable quarantine rows of the home (after a restart); returns how many."""
        rows = current_retryable(self.home)
        self.watch(rows)
        return len(rows)

    def watch(self, rows: list[dict]) -> None:
        """Watch quarantine rows (dicts with the quarantine table's columns, ``retryable`` true)."""
        unknown = [row["file_id"] for row in rows if "writer" not in row]
        ledger = _ledger_columns_of(self.ledger, unknown) if unknown else {}
        with self._lock:
            for row in rows:
                cause, attempt = Cause(row["cause"]), int(row.get("attempt") or 0)
                ingested = row["ingested_at"].timestamp() if isinstance(row["ingested_at"], datetime) else self.clock()
                due = ingested + backoff_seconds(attempt, self.backoff) if cause is Cause.TRANSIENT else self.clock()
                copied = {name: row.get(name) for name in RETRY_COLUMNS}
                copied.update({name: row.get(name, ledger.get(row["file_id"], {}).get(name)) for name in FROM_LEDGER_ONLY})
                copied["attempt"] = attempt
                current = self._watched.get(row["file_id"])
                if current is None or current.row["attempt"] <= attempt:
                    self._watched[row["file_id"]] = Watched(copied, cause, row.get("stored_path"), due)

    def tick(self) -> int:
        """Record the retries that are due now, in one ledger commit; returns how many."""
        now = self.clock()
        with self._lock:
            candidates = [w for w in self._watched.values() if w.due <= now]
        due: list[tuple[Watched, str | None]] = []
        alive: dict[str | None, bool] = {}  # one look per writer and tick
        looked_for = [w.row for w in candidates if w.cause is not Cause.TRANSIENT]
        there = self.present(looked_for) if looked_for else set()
        for watched in candidates:
            if watched.cause is Cause.TRANSIENT:
                due.append((watched, watched.stored_path))
            elif watched.row["path"] in there:
                due.append((watched, None))
            elif watched.cause is Cause.WAITING and not self._alive(watched.row["writer"], now, alive):
                due.append((watched, None))  # its writer is gone: the next verdict says so
            else:
                watched.due = now + (TICK_SECONDS if watched.cause is Cause.WAITING else MISSING_CHECK_SECONDS)
        if not due:
            return 0
        record_retries(self.ledger, [w.row for w, _ in due], [read_from for _, read_from in due])
        with self._lock:
            for watched, _ in due:
                if self._watched.get(watched.row["file_id"]) is watched:
                    del self._watched[watched.row["file_id"]]
        log.info("asked the stream to try %d quarantined files again (e.g. %s: %s)", len(due),
                 due[0][0].row["path"], due[0][0].cause.value)
        return len(due)

    def _alive(self, writer: str | None, now: float, seen: dict[str | None, bool]) -> bool:
        if writer not in seen:
            seen[writer] = writer_alive(self.config.writers, writer, self.config.discovery.writer_timeout, now,
                                        files=self.files)
        return seen[writer]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fruits-retries", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.tick()
            except Exception:  # a failed look or commit is tried again at the next tick; never stop retrying
                log.exception("retries failed; trying again")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def current_retryable(home: Home) -> list[dict]:
    """The quarantine rows that are the current outcome of their file version and that the stream retries by itself.
    Reads the retryable quarantine rows (Delta statistics skip the files that hold none: a restart on a home with a
    million outcome rows reads next to nothing), then only the outcome rows of their file versions."""
    candidates = home.quarantine.read(filter=pc.field("retryable"))
    if candidates.num_rows == 0:
        return []
    candidates = with_attempt(candidates)
    ids = pc.field("file_id").isin(pc.unique(candidates.column("file_id")))
    quarantined = with_attempt(home.quarantine.read(["file_id", "attempt"], filter=ids))
    retried = home.features.read(["file_id", "attempt"], filter=(pc.field("attempt") > 0) & ids)
    newest = newest_per_file(pa.concat_tables([_tagged(quarantined, "quarantine"), _tagged(retried, "features")]))
    newest_attempt = dict(zip(newest.column("file_id").to_pylist(), newest.column("attempt").to_pylist()))
    newest_kind = dict(zip(newest.column("file_id").to_pylist(), newest.column("kind").to_pylist()))
    return [
        row for row in candidates.to_pylist()
        if newest_kind[row["file_id"]] == "quarantine" and newest_attempt[row["file_id"]] == row["attempt"]
    ]


def _tagged(rows: pa.Table, kind: OutcomeKind) -> pa.Table:
    """(file_id, attempt, kind) of outcome rows, for :func:`fruits.home.files.newest_per_file`."""
    return pa.table({
        "file_id": rows.column("file_id"), "attempt": rows.column("attempt").cast(pa.int64()),
        "kind": pa.array([kind] * rows.num_rows, pa.string()),
    })


def _ledger_columns_of(ledger: Table, file_ids: list[str]) -> dict[str, dict]:
    """:data:`FROM_LEDGER_ONLY` of the ledger rows of ``file_ids`` (by file id)."""
    only = pc.field("file_id").isin(pa.array(file_ids, pa.string()))
    return {row["file_id"]: row for row in ledger.read(["file_id", *FROM_LEDGER_ONLY], filter=only).to_pylist()}
