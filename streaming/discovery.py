"""Discovery: find landed files and record each new file version in the ledger (:mod:`fruits.ledger`).

Two ways in, both inside ``fruits stream`` on the driver:

- **events**: a ``watchdog`` observer on a local landing folder. A file renamed within landing is recorded at once;
  any other file once it has been quiet for ``SETTLE_SECONDS`` (a ``cp -p`` closes the file, then sets its mtime:
  both are one version, not two);
- **listing** (backfill): the whole landing folder at start-up and every ``[discovery] backfill_interval``. It is the
  only way on ``s3a://`` / ``hdfs://`` and catches whatever events were lost (a watcher that was not running, a full
  inotify queue). A file's mtime plays no part: an old photo moved in is new to the ledger all the same.

``fruits drop`` / ``stage`` record their files themselves before the rename that makes them visible, so by the time
an event or a listing sees such a file, the ledger already holds it: discovery reads the ledger's new rows before it
decides, and never records a version twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from fruits.config import Config
from fruits.names import is_candidate
from fruits.ledger import FileVersion, LedgerView, digests, label_of, local_mtime_ms, path_digests, record
from fruits.uris import hadoop_uri, local_path

log = logging.getLogger("fruits.discovery")

# A file written in place is recorded after this long without events (covers close-then-utime of `cp -p`).
SETTLE_SECONDS = 0.25


def _hidden(name: str) -> bool:
    """Names the stream never reads (Spark's convention, and temporary files): ``.x``, ``_x``, ``~x``."""
    return name.startswith((".", "_", "~"))


def list_local(root: str, extensions: list[str]) -> list[FileVersion]:
    """Every candidate image below the local folder ``root`` (hidden folders skipped), with size and mtime."""
    found: list[FileVersion] = []
    landing = hadoop_uri(root.rstrip("/"))
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            if _hidden(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False) and is_candidate(entry.name, extensions):
                    stat = entry.stat(follow_symlinks=False)
                    path = hadoop_uri(entry.path)
                    found.append(FileVersion(path, stat.st_size, local_mtime_ms(stat), label_of(path, landing)))
            except FileNotFoundError:  # removed while we listed: a later listing or event decides
                continue
    return found


def list_hadoop(spark, root: str, extensions: list[str]) -> list[FileVersion]:
    """Every candidate image below ``root`` on any Hadoop file system (s3a://, hdfs://), through the JVM."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(root)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        return []
    landing = fs.makeQualified(path).toString().rstrip("/")
    found = []
    files = fs.listFiles(path, True)
    while files.hasNext():
        status = files.next()
        uri = status.getPath().toString()
        relative = uri[len(landing) + 1 :].split("/")
        if any(_hidden(part) for part in relative) or not is_candidate(relative[-1], extensions):
            continue
        found.append(
            FileVersion(uri, int(status.getLen()), int(status.getModificationTime()), label_of(uri, landing), _etag(status))
        )
    return found


def _etag(status) -> str | None:
    """An object store's ETag of a listed file (S3A's statuses carry it; HDFS's do not): it, not the mtime the
    server sets on upload, identifies the object's version (:mod:`fruits.ledger`)."""
    try:
        etag = status.getEtag()
    except Exception:  # py4j: no such method on this file system's status
        return None
    return str(etag).strip('"') if etag else None


@dataclass(eq=False)  # watchdog keeps handlers in a set: identity hashing
class _Events(FileSystemEventHandler):
    """Remembers, per path, when it may be recorded; folders created or moved in are walked for their files.

    A file renamed within landing (the last step of ``rsync`` and ``fruits drop``: a hidden temporary name, then the
    final one) is complete: it is recorded at once, and ``arrived`` wakes the discovery thread. Any other file waits
    until it has been quiet for ``settle`` seconds (``cp -p`` closes the file, then sets its mtime: both are one
    version, not two).
    """

    extensions: list[str]
    settle: float = SETTLE_SECONDS
    ready_at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Event = field(default_factory=threading.Event)

    def _touch(self, path: str | bytes, complete: bool = False) -> None:
        path = os.fsdecode(path)
        if is_candidate(os.path.basename(path), self.extensions):
            now = time.monotonic()
            with self.lock:
                # a later write to a renamed file makes it wait like any other (it may still be changing)
                self.ready_at[path] = now if complete and path not in self.ready_at else now + self.settle
            if complete:
                self.arrived.set()

    def _walk(self, folder: str | bytes, complete: bool) -> None:
        for version in list_local(os.fsdecode(folder), self.extensions):
            self._touch(local_path(version.path), complete)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("deleted", "opened", "closed_no_write"):
            return
        moved = event.event_type == "moved"
        target = event.dest_path if moved else event.src_path
        if event.is_directory:
            if event.event_type in ("created", "moved"):
                self._walk(target, complete=moved)
        else:
            self._touch(target, complete=moved)

    def settled(self, everything: bool = False) -> list[str]:
        """Paths that may be recorded now (``everything``: all of them), removed from the pending set."""
        now = time.monotonic()
        with self.lock:
            ready = [p for p, t in self.ready_at.items() if everything or t <= now]
            for path in ready:
                del self.ready_at[path]
        return ready


class Discovery:
    """Records every new file version of the landing folder in the ledger; see the module docstring."""

    def __init__(
        self, config: Config, landing: str, spark=None, after_listing: Callable[[list[FileVersion]], object] | None = None
    ) -> None:
        settings = config.discovery
        self.ledger = config.files_table
        self.landing = landing  # as Spark spells it: file:/x or s3a://b/k
        self.local = local_path(landing)
        self.spark = spark
        self.extensions = config.stream.extensions
        self.keep = settings.after_ingest == "keep"
        self.watch = settings.watch and self.local is not None
        self.backfill_seconds = settings.backfill_interval
        self.commit_seconds = settings.commit_interval
        self.max_rows = settings.max_rows_per_commit
        # Overwrites in place only exist when files stay in landing; otherwise a name is free again once archived.
        self.view = LedgerView(self.ledger, track_paths=self.keep)
        self.after_listing = after_listing  # told every listing's files (fruits.streaming.leftovers)
        self.recorded: Counter[str] = Counter()
        self.last_backfill: dict[str, float] = {}
        self._events = _Events(self.extensions)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer = None
        self._write_lock = threading.Lock()

    def list_landing(self) -> list[FileVersion]:
        """Every candidate file in landing now."""
        if self.local is not None:
            return list_local(self.local, self.extensions)
        return list_hadoop(self.spark, self.landing, self.extensions)

    def backfill(self) -> int:
        """List the whole landing folder and record the versions the ledger lacks; returns how many."""
        started = time.perf_counter()
        listed = self.list_landing()
        listed_at = time.perf_counter()
        new = self._record_new(listed, "backfill")
        if self.after_listing is not None:
            self.after_listing(listed)
        self.last_backfill = {
            "listed": len(listed), "new": new, "list_seconds": round(listed_at - started, 3),
            "seconds": round(time.perf_counter() - started, 3),
        }
        log.info(
            "backfill: %d files listed in %.2f s, %d new recorded", len(listed), listed_at - started, new
        )
        return new

    def flush_events(self, everything: bool = False) -> int:
        """Record the settled paths of file events (``everything``: all pending ones); returns how many new versions
        were recorded."""
        versions = []
        for path in self._events.settled(everything):
            try:
                stat = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not os.path.isfile(path) or any(_hidden(p) for p in os.path.relpath(path, self.local).split(os.sep)):
                continue
            uri = hadoop_uri(path)
            versions.append(FileVersion(uri, stat.st_size, local_mtime_ms(stat), label_of(uri, self.landing)))
        return self._record_new(versions, "watch") if versions else 0

    def _record_new(self, versions: list[FileVersion], method: str) -> int:
        """Record the versions the ledger does not hold yet (after reading its newest rows); returns how many."""
        with self._write_lock:
            self.view.refresh()
            by_id = {v.file_id: v for v in versions}  # file_id hashes: computed once per version
            unique, ids = list(by_id.values()), digests(list(by_id))
            new = ~self.view.ids.contains(ids)
            unique, ids = [v for v, n in zip(unique, new) if n], ids[new]
            for start in range(0, len(unique), self.max_rows):
                chunk = unique[start : start + self.max_rows]
                paths = path_digests([v.path for v in chunk]) if self.keep else None
                overwrites = self.view.paths.contains(paths).tolist() if self.keep else None
                record(self.view.target, chunk, method, overwrites)  # the view's table: its log is read already
                self.view.ids.add(ids[start : start + self.max_rows])
                if self.keep:
                    self.view.paths.add(paths)
            self.recorded[method] += len(unique)
            return len(unique)

    def start(self, continuous: bool = True) -> None:
        """One listing now (so a run that processes what is there sees it all); with ``continuous``, then the
        watcher and the periodic listing until :meth:`stop`."""
        self.view.refresh()
        self.backfill()
        if not continuous:
            return
        if self.watch:
            os.makedirs(self.local, exist_ok=True)
            self._observer = Observer()
            self._observer.schedule(self._events, self.local, recursive=True)
            self._observer.start()
        self._thread = threading.Thread(target=self._run, name="fruits-discovery", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_backfill = time.monotonic() + self.backfill_seconds
        while not self._stop.is_set():
            # A renamed-in file wakes the thread at once; the files that arrive during a commit go in the next one.
            self._events.arrived.wait(self.commit_seconds)
            self._events.arrived.clear()
            if self._stop.is_set():
                break
            try:
                if self.watch:
                    self.flush_events()
                if time.monotonic() >= next_backfill:
                    self.backfill()
                    next_backfill = time.monotonic() + self.backfill_seconds
            except Exception:  # a failed commit or listing is retried on the next tick; never stop discovering
                log.exception("discovery failed; retrying")

    def stop(self) -> None:
        """Stop the watcher and the timer (recording what has settled first)."""
        self._stop.set()
        self._events.arrived.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
        if self._thread is not None:
            self._thread.join()
        if self._observer is not None:
            self.flush_events(everything=True)
