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

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake

from fruits.uris import rust_uri

# Commits written through one loaded table before it is loaded again (delta-rs writes a checkpoint every 100 commits).
RELOAD_EVERY = 100


class AppendTarget:
    """A Delta table at ``location`` that rows are appended to, one commit per :meth:`append`, from any thread."""

    def __init__(self, location: str, reload_every: int = RELOAD_EVERY) -> None:
        self.location = location
        self.reload_every = reload_every
        self._table: DeltaTable | None = None
        self._commits = 0  # written through the loaded table
        self._lock = threading.RLock()

    @property
    def table(self) -> DeltaTable:
        """The loaded table (loaded now if it was never loaded, or had :data:`RELOAD_EVERY` commits written through it)."""
        with self._lock:
            if self._table is None or self._commits >= self.reload_every:
                self._table, self._commits = DeltaTable(rust_uri(self.location)), 0
            return self._table

    def append(self, rows: pa.Table, metadata: dict[str, str] | None = None) -> None:
        """Append ``rows`` in one commit (``metadata``: custom commitInfo entries)."""
        with self._lock:
            write_deltalake(self.table, rows, mode="append", commit_properties=CommitProperties(custom_metadata=metadata))
            self._commits += 1
