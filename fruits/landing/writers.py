"""Heartbeats of the processes that record files in the ledger before the files appear.

``fruits drop``, ``fruits stage`` and ``fruits serve`` commit a file's ledger row first, then make the file visible
(a rename; on S3 a PUT, one after another for a large group). The stream must tell "not there yet" from "never
coming": each such process holds a :class:`WriterLease` while it runs, a small marker ``HOME/writers/<id>`` that it
rewrites every ``timeout / 3`` seconds, and its ledger rows carry the lease's id (``writer``). A row whose file is
missing waits while its writer's marker is fresh (:func:`writer_alive`), on any machine that sees the home; once
the marker is gone or stale, the row is quarantined as missing, and ingested whenever its file appears after all.

The lease id is random: two containers of one service share a hostname and a pid, never an id.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time

from fruits.config import join_uri
from fruits.home.filesystem import Files, FileSystem, UnsupportedLocation
from fruits.home.home import Home

log = logging.getLogger("fruits.landing.writers")


class WriterLease:
    """A heartbeat marker at ``folder/<id>`` rewritten every ``timeout / 3`` seconds from :meth:`start` to
    :meth:`stop` (a context manager stops it at the end).

    >>> with WriterLease("/data/fruits/writers", timeout=30.0) as lease:
    ...     lease.start()
    ...     record(ledger, versions, "drop", writer=lease.id)  # then make the files visible
    """

    def __init__(self, folder: str, timeout: float, *, files: FileSystem | None = None) -> None:
        self.timeout = timeout
        self.files = files or Files()  # the home's file system (the default reaches local folders only)
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(8)}"
        self.uri = join_uri(folder, self.id)
        self._beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_home(cls, home: Home) -> "WriterLease":
        """The heartbeat of a process that records files into ``home`` before they appear (drop, stage, serve)."""
        return cls(home.writers, home.config.discovery.writer_timeout, files=home.files)

    def __enter__(self) -> "WriterLease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Write the marker and keep it fresh (once: later calls do nothing). Writers call it just before they record
        their first row, so that a command that lands nothing leaves nothing behind."""
        if self._thread is not None:
            return
        self.beat()
        self._thread = threading.Thread(target=self._run, name="fruits-writer-lease", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        """Rewrite the marker now (its modification time is the heartbeat)."""
        self._beats += 1
        body = json.dumps({"id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "beat": self._beats,
                           "at": time.time()}).encode()
        self.files.write(self.uri, body)  # atomic: a reader never sees half a marker

    def _run(self) -> None:
        while not self._stop.wait(self.timeout / 3):
            try:
                self.beat()
            except Exception as exc:  # a missed beat (a disk or an S3 client error) is retried; silent for `timeout`: gone
                log.warning("writer heartbeat %s failed: %s", self.uri, exc)

    def stop(self) -> None:
        """Stop beating and remove the marker: the rows of this writer whose file never appeared are missing now."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join()
        try:
            self.files.delete(self.uri)
        except OSError as exc:
            log.debug("writer marker %s: %s", self.uri, exc)


def writer_alive(
    folder: str, writer: str | None, timeout: float, now: float | None = None, *, files: FileSystem | None = None
) -> bool:
    """Whether the writer ``writer`` (a lease id; None: no writer) has beaten within ``timeout`` seconds: the
    modification time of its marker, as ``files`` (the home's file system; default: local folders) sees it."""
    if not writer:
        return False
    now = time.time() if now is None else now
    try:
        found = (files or Files()).stat(join_uri(folder, writer))
    except UnsupportedLocation:  # a store whose writers cannot heartbeat (hdfs://): none is alive
        return False
    return found is not None and now - found.mtime_ms / 1000 < timeout
