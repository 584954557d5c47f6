"""Blind appends with delta-rs from long-running processes: the stream's discovery (ledger rows) and sink (outcome
rows), `fruits stage` and the web server (ledger rows of what they land).

An :class:`AppendTarget` keeps its table loaded, so an append writes its commit without reading the table's log again
(a blind append commits on top of whatever other writers committed since). deltalake's loaded table gets slower with
every commit written through it, though: its appends grow from milliseconds to a large part of a second after a few
thousand commits, while a table loaded afresh stays fast (``python bench/delta_rs_appends.py``). So the table is
loaded again every :data:`RELOAD_EVERY` commits: the reload's cost, spread over them, is small.
"""

from __future__ import annotations

import threading
from typing import Callable

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake

from fruits.home.uris import rust_uri

# Commits written through one loaded table before it is loaded again (delta-rs writes a checkpoint every 100 commits).
RELOAD_EVERY = 100


class AppendTarget:
    """A Delta table at ``location`` that rows are appended to, one commit per :meth:`append`, from any thread.
    ``create`` (e.g. :func:`fruits.home.ledger.ensure_ledger`) is called with ``location`` before the first load, to make
    the table when there is none yet."""

    def __init__(self, location: str, reload_every: int = RELOAD_EVERY, create: Callable[[str], None] | None = None) -> None:
        self.location = location
        self.reload_every = reload_every
        self.create = create
        self._table: DeltaTable | None = None
        self._commits = 0  # written through the loaded table
        self._lock = threading.RLock()

    @property
    def table(self) -> DeltaTable:
        """The loaded table (loaded now if it was never loaded, or had :data:`RELOAD_EVERY` commits written through it)."""
        with self._lock:
            if self._table is None and self.create is not None:
                self.create(self.location)
            if self._table is None or self._commits >= self.reload_every:
                self._table, self._commits = DeltaTable(rust_uri(self.location)), 0
            return self._table

    def append(self, rows: pa.Table, metadata: dict[str, str] | None = None) -> None:
        """Append ``rows`` in one commit (``metadata``: custom commitInfo entries)."""
        with self._lock:
            write_deltalake(self.table, rows, mode="append", commit_properties=CommitProperties(custom_metadata=metadata))
            self._commits += 1


def append_rows(table: str | AppendTarget, rows: pa.Table, metadata: dict[str, str] | None = None) -> None:
    """Append ``rows`` in one commit to ``table``: an :class:`AppendTarget`, or a location (its log read for this
    commit only: what a one-off command such as ``fruits drop`` does)."""
    target = table if isinstance(table, AppendTarget) else AppendTarget(table, reload_every=1)
    target.append(rows, metadata)
