"""Discovery: find landed files and record each new file version in the ledger (:mod:`fruits.home.ledger`).

Two ways in, both inside ``fruits stream`` on the driver:

- **events**: a ``watchdog`` observer on a local landing folder. A file is recorded only once complete: renamed
  within landing (at once), or closed by its writer after writing (``SETTLE_SECONDS`` later: a ``cp -p`` closes the
  file, then sets its mtime: both are one version, not two). A writer that pauses with the file open is waited for;
  where the watcher reports no closes (not Linux), a file is recorded once quiet for ``[discovery] quiet_seconds``;
- **listing** (backfill): the whole landing folder at start-up and every ``[discovery] backfill_interval``. It is the
  only way on ``s3a://`` / ``hdfs://`` (the home's file system lists them) and catches whatever events were lost (a watcher that was not running, a full
  inotify queue). An old photo moved in is new to the ledger all the same; but a local file modified less than
  ``quiet_seconds`` ago may still be written: it is looked at again until it is quiet (an object is always complete).

A file changed after it was recorded is a new version, with its own ledger row. Names are bytes: one that is not UTF-8
is recorded under a readable spelling plus its exact bytes (:mod:`fruits.home.names`); a symbolic link is read only if it
leads to a file inside landing (:func:`local_version`).

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
from stat import S_ISLNK, S_ISREG
from dataclasses import dataclass, field
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from fruits.home.filesystem import FileSystem
from fruits.home.home import Home
from fruits.home.names import is_candidate, local_bytes, readable
from fruits.home.ledger import DiscoveredBy, FileVersion, LedgerView, digests, label_of, local_mtime_ms, path_digests, record
from fruits.home.uris import hadoop_uri, local_path

log = logging.getLogger("fruits.discovery")

# A file written in place is recorded after this long without events (covers close-then-utime of `cp -p`).
SETTLE_SECONDS = 0.25
# How often listed files that were not quiet yet are looked at again.
RECHECK_SECONDS = 1.0


def _hidden(name: str) -> bool:
    """Names the stream never reads (Spark's convention, and temporary files): ``.x``, ``_x``, ``~x``."""
    return name.startswith((".", "_", "~"))


def list_local(root: str, extensions: list[str]) -> list[FileVersion]:
    """Every candidate image below the local folder ``root`` (hidden folders skipped), with size and mtime; a symbolic
    link only if it leads to a file inside ``root`` (:func:`local_version`)."""
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
                elif is_candidate(entry.name, extensions) and (version := local_version(entry.path, root, landing)):
                    found.append(version)
            except FileNotFoundError:  # removed while we listed: a later listing or event decides
                continue
    return found


def _identity(folder: str) -> tuple[int, int] | None:
    """(device, inode) of ``folder``, None if nothing is there (or it cannot be looked at: never an exception out of
    the discovery thread's loop)."""
    try:
        found = os.stat(folder)
    except OSError:
        return None
    return found.st_dev, found.st_ino


_reported: set[str] = set()  # paths already reported as not read (once per process, not per listing)


def _report_once(path: str, why: str, *args: object) -> None:
    if path not in _reported:
        _reported.add(path)
        log.warning("not read: %s " + why, readable(path), *args)


def local_version(path: str, root: str, landing: str) -> FileVersion | None:
    """The version of the regular file at ``path`` below the local landing folder ``root`` (``landing``: as Spark
    spells it), or None for anything else. A symbolic link is followed only to a regular file inside ``root``: it is
    recorded with its target's size and mtime (what the reader will read, so the byte cap applies to it). What is
    not read (a link out of landing or to nothing, a FIFO, socket or device with an image's name) is skipped, by
    events and listings alike, and reported once in the log."""
    stat = os.lstat(path)
    if S_ISLNK(stat.st_mode):
        try:
            target = os.path.realpath(path, strict=True)
        except OSError:
            _report_once(path, "is a symbolic link that leads nowhere (its target is gone, or a loop)")
            return None
        if os.path.commonpath([target, os.path.realpath(root)]) != os.path.realpath(root):
            _report_once(path, "is a symbolic link out of the landing folder (to %s)", readable(target))
            return None
        stat = os.stat(path)
    if not S_ISREG(stat.st_mode):
        _report_once(path, "is not a regular file (a FIFO, a socket, a device, or a link to a folder)")
        return None
    uri = hadoop_uri(path)
    return FileVersion(uri, stat.st_size, local_mtime_ms(stat), label_of(uri, landing))


def list_remote(files: FileSystem, root: str, extensions: list[str]) -> list[FileVersion]:
    """Every candidate image below ``root`` (as Spark spells it) on a remote store (s3a://, hdfs://): one recursive
    listing, with each object's ETag where the store has one (it, not the mtime the server sets on upload, identifies
    an object's version: :mod:`fruits.home.ledger`)."""
    landing = root.rstrip("/")
    found = []
    for listed in files.list(root, recursive=True):
        relative = listed.uri[len(landing) + 1 :].split("/")
        if any(_hidden(part) for part in relative) or not is_candidate(relative[-1], extensions):
            continue
        found.append(FileVersion(listed.uri, listed.size, listed.mtime_ms, label_of(listed.uri, landing), listed.etag))
    return found


def _reports_closes() -> bool:
    """Whether the watcher reports a writer's close (Linux inotify's close-write); others (macOS, Windows, polling)
    do not, and a file written in place is then recorded once quiet."""
    from watchdog.observers.inotify import InotifyObserver

    return Observer is InotifyObserver


@dataclass(eq=False)  # watchdog keeps handlers in a set: identity hashing
class _Events(FileSystemEventHandler):
    """Remembers, per path, when it may be recorded; folders created or moved in are walked for their files.

    A file is recorded only once complete:

    - renamed within landing (the last step of ``rsync`` and ``fruits drop``): at once, and ``arrived`` wakes the
      discovery thread;
    - closed by its writer after writing (inotify's close-write, watchdog's ``closed``): ``settle`` seconds later
      (``cp -p`` closes the file, then sets its mtime: both are one version, not two);
    - written with no close seen: where the watcher reports closes (``closes``: inotify), it waits for the close,
      however long the writer pauses with the file open (scp, SMB, a camera); elsewhere, until quiet for ``quiet``.
    """

    extensions: list[str]
    settle: float = SETTLE_SECONDS
    quiet: float = 10.0
    closes: bool = True
    ready_at: dict[str, float] = field(default_factory=dict)
    writing: set[str] = field(default_factory=set)  # written since their last close
    created: set[str] = field(default_factory=set)  # created, then neither written, closed nor renamed since
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Event = field(default_factory=threading.Event)

    def _touch(self, path: str | bytes, how: str) -> None:
        """``how``: "moved" (complete), "closed" (closed after writing), "created" (moved in from outside, or
        opened to be written: an empty file then waits for its close, see :meth:`Discovery.flush_events`), "written"
        or "attrib"."""
        path = os.fsdecode(path)
        if not is_candidate(os.path.basename(path), self.extensions):
            return
        now = time.monotonic()
        with self.lock:
            if how == "created" and path not in self.writing:
                self.created.add(path)
            elif how != "attrib":
                self.created.discard(path)
            if how == "written":
                self.writing.add(path)
                self.ready_at[path] = now + self.quiet if not self.closes else float("inf")
            elif how in ("attrib", "created") and path in self.writing:
                return  # still open for writing: its close decides
            elif how == "created":  # a file moved in from outside the watched tree arrives so, with no close
                self.ready_at[path] = now + self.settle
            else:
                self.writing.discard(path)
                # a renamed file is complete; a later change to it makes it wait like any other
                self.ready_at[path] = now if how == "moved" and path not in self.ready_at else now + self.settle
        if how == "moved":
            self.arrived.set()

    def _walk(self, folder: str | bytes, complete: bool) -> None:
        """The files of a folder created or moved in (their own events may have come before the watch did)."""
        for version in list_local(os.fsdecode(folder), self.extensions):
            path = os.fsdecode(local_bytes(version.row))
            if complete:
                self._touch(path, "moved")
            else:
                now = time.monotonic()
                with self.lock:  # written before the watch on its folder existed: no close to wait for
                    self.ready_at.setdefault(path, now + self.quiet)

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind in ("deleted", "opened", "closed_no_write"):
            return
        target = event.dest_path if kind == "moved" else event.src_path
        if event.is_directory:
            if kind in ("created", "moved"):
                self._walk(target, complete=kind == "moved")
        else:
            self._touch(target, {"moved": "moved", "closed": "closed", "attrib": "attrib", "created": "created"}.get(kind, "written"))

    def settled(self, *, everything: bool = False) -> list[str]:
        """Paths that may be recorded now (``everything``: all of them), removed from the pending set."""
        now = time.monotonic()
        with self.lock:
            # (at a stop, a file still open for writing is left to the next start's listing)
            ready = [p for p, t in self.ready_at.items() if t <= now or (everything and p not in self.writing)]
            for path in ready:
                del self.ready_at[path]
                self.writing.discard(path)
        return ready

    def wait_for_close(self, path: str) -> None:
        """``path`` settled empty with only its creation seen: it waits for its writer's close, unless an event came
        for it since it settled (that event decides: a close caught between the flush's look at its size and now is
        not overwritten)."""
        with self.lock:
            if path not in self.ready_at:
                self.writing.add(path)
                self.ready_at[path] = float("inf")

    def only_created(self, path: str) -> bool:
        """Whether ``path``'s only event was its creation (no write, close or rename since): an empty file then is
        one its writer has not started writing, not an empty photo (an empty file closed or renamed within landing is
        recorded, and quarantined as empty; one moved in from outside arrives as a creation, and waits for the
        listing). Asked once per settled path, which forgets it."""
        with self.lock:
            if path in self.created:
                self.created.discard(path)
                return True
            return False


@dataclass
class _Young:
    """A listed file modified less than ``[discovery] quiet_seconds`` ago: looked at again later."""

    size: int
    mtime_ms: int
    seen: float  # monotonic time since which it has had this size and mtime


class Discovery:
    """Records every new file version of the landing folder in the ledger; see the module docstring."""

    def __init__(
        self, home: Home, landing: str, files: FileSystem | None = None,
        after_listing: Callable[[list[FileVersion]], object] | None = None,
    ) -> None:
        config = home.config
        settings = config.discovery
        self.landing = landing  # as Spark spells it: file:/x or s3a://b/k
        self.local = local_path(landing)
        self.files = files  # lists a remote landing folder (a local one is walked here: links and names as bytes)
        self.extensions = config.stream.extensions
        self.keep = settings.after_ingest == "keep"
        self.watch = settings.watch and self.local is not None
        self.backfill_seconds = settings.backfill_interval
        self.commit_seconds = settings.commit_interval
        self.max_rows = settings.max_rows_per_commit
        self.quiet = settings.quiet_seconds
        # Overwrites in place only exist when files stay in landing; otherwise a name is free again once archived.
        self.view = LedgerView(home.ledger, track_paths=self.keep)
        self.after_listing = after_listing  # told every listing's files (fruits.streaming.leftovers)
        self.recorded: Counter[str] = Counter()
        self.last_backfill: dict[str, float] = {}
        self._events = _Events(self.extensions, quiet=self.quiet, closes=_reports_closes())
        self.young: dict[str, _Young] = {}  # listed files not quiet yet, by local path
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer = None
        self._watched: tuple[int, int] | None = None  # the landing folder the watcher watches: (device, inode)
        self._write_lock = threading.Lock()

    def list_landing(self) -> list[FileVersion]:
        """Every candidate file in landing now."""
        if self.local is not None:
            return list_local(self.local, self.extensions)
        return list_remote(self.files, self.landing, self.extensions)

    def backfill(self) -> int:
        """List the whole landing folder and record the versions the ledger lacks; returns how many. A local file
        modified less than ``quiet_seconds`` ago may still be written: it waits in :attr:`young` (:meth:`recheck`)."""
        started = time.perf_counter()
        listed = self.list_landing()
        listed_at = time.perf_counter()
        new = self._record_new(listed, "backfill", listed=True)
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

    def _quiet_ones(self, listed: list[FileVersion]) -> list[FileVersion]:
        """Of a local listing, the files that are complete by the listing's rule: modified ``quiet_seconds`` ago or
        more, or seen with the same size and mtime for that long (an mtime in the future, a wrong camera clock).
        The others go to :attr:`young`. Object stores: every listed object is complete."""
        if self.local is None or self.quiet <= 0:
            return listed
        now_ms, now = time.time() * 1000, time.monotonic()
        complete = []
        for version in listed:
            path = os.fsdecode(local_bytes(version.row))
            young = self.young.get(path)
            if young is None or (young.size, young.mtime_ms) != (version.size, version.mtime_ms):
                young = _Young(version.size, version.mtime_ms, now)
            if version.mtime_ms <= now_ms - self.quiet * 1000 or now - young.seen >= self.quiet:
                self.young.pop(path, None)
                complete.append(version)
            else:
                self.young[path] = young
        return complete

    def recheck(self) -> int:
        """Look again at the listed files that were not quiet yet; record those that are now."""
        if not self.young:
            return 0
        versions = []
        for path in list(self.young):
            try:
                version = local_version(path, self.local, self.landing)
            except FileNotFoundError:
                version = None
            if version is None or self.view.ids.contains(digests([version.file_id]))[0]:  # gone, or recorded since
                del self.young[path]
            else:
                versions.append(version)
        return self._record_new(versions, "backfill", listed=True)

    def await_young(self, limit: float) -> int:
        """For a run that processes what is there (``--available-now``): wait until the listed files that were not
        quiet are (at most ``limit`` seconds; a file still changing then is left for the next run), record them."""
        deadline, recorded = time.monotonic() + limit, 0
        while self.young and time.monotonic() < deadline:
            time.sleep(min(RECHECK_SECONDS, self.quiet))
            recorded += self.recheck()
        if self.young:
            log.warning("%d files still changing after %.0f s, left for the next run (e.g. %s)",
                        len(self.young), limit, readable(next(iter(self.young))))
        return recorded

    def flush_events(self, *, everything: bool = False) -> int:
        """Record the settled paths of file events (``everything``: all pending ones); returns how many new versions
        were recorded."""
        versions = []
        for path in self._events.settled(everything=everything):
            only_created = self._events.only_created(path)
            if any(_hidden(p) for p in os.path.relpath(path, self.local).split(os.sep)):
                continue
            try:
                version = local_version(path, self.local, self.landing)
            except FileNotFoundError:
                continue
            if version is not None and version.size == 0 and self._events.closes and only_created:
                if not everything:  # created, not written yet: its writer's close decides
                    self._events.wait_for_close(path)
                # (at a stop, it is left to the next start's listing, as a file still open for writing is)
            elif version is not None:
                versions.append(version)
        return self._record_new(versions, "watch") if versions else 0

    def _record_new(self, versions: list[FileVersion], method: DiscoveredBy, listed: bool = False) -> int:
        """Record the versions the ledger does not hold yet (after reading its newest rows); returns how many.
        ``listed``: they come from a listing, and those not quiet yet wait (:meth:`_quiet_ones`)."""
        with self._write_lock:
            self.view.refresh()
            by_id = {v.file_id: v for v in versions}  # file_id hashes: computed once per version
            unique, ids = list(by_id.values()), digests(list(by_id))
            new = ~self.view.ids.contains(ids)
            unique, ids = [v for v, n in zip(unique, new) if n], ids[new]
            if listed and unique:
                unique = self._quiet_ones(unique)
                ids = digests([v.file_id for v in unique])
            for start in range(0, len(unique), self.max_rows):
                chunk = unique[start : start + self.max_rows]
                paths = path_digests([v.exact for v in chunk]) if self.keep else None
                overwrites = self.view.paths.contains(paths).tolist() if self.keep else None
                record(self.view.ledger, chunk, method, overwrites=overwrites)  # the view's table: its log is read already
                self.view.ids.add(ids[start : start + self.max_rows])
                if self.keep:
                    self.view.paths.add(paths)
            self.recorded[method] += len(unique)
            return len(unique)

    def start(self, *, continuous: bool = True) -> None:
        """Without ``continuous``: one listing now, so a run that processes what is there sees it all. With it: the
        discovery thread starts the watcher, then makes the first listing and the periodic ones until :meth:`stop`.
        The stream starts meanwhile: a restart on a landing folder of a million files waits neither for their listing
        nor for the watcher's walk of landing (bench/discovery_scale.py), and a file that lands during the listing is
        seen by the one or the other (the watcher is up before the listing starts)."""
        if not continuous:
            self.view.refresh()
            self.backfill()
            self.await_young(3 * self.quiet)
            return
        self._thread = threading.Thread(target=self._run, name="fruits-discovery", daemon=True)
        self._thread.start()

    def _start_watcher(self) -> None:
        """File events on the local landing folder (the observer walks landing to watch each folder)."""
        os.makedirs(self.local, exist_ok=True)
        self._watched = _identity(self.local)  # before the watch: a folder replaced after it is seen as replaced
        observer = Observer()
        observer.schedule(self._events, self.local, recursive=True)
        observer.start()
        self._observer = observer

    def _stop_watcher(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None

    def _landing_replaced(self) -> bool:
        """True if the folder at landing's path is no longer the one watched (moved away, deleted, made again): its
        watches follow the old folder, so nothing that lands in the new one would be seen until a listing."""
        return self._observer is not None and _identity(self.local) != self._watched

    def _run(self) -> None:
        next_backfill = next_recheck = next_watch = time.monotonic()  # the watcher, then the first listing, at once
        while not self._stop.is_set():
            if self.watch and self._observer is None and time.monotonic() >= next_watch:
                try:
                    self._start_watcher()
                except Exception:  # e.g. the inotify watch limit: the listings still find every file
                    log.exception("file events unavailable; landed files are found by the listings, every %.0f s, "
                                  "until the watcher starts (tried again then)", self.backfill_seconds)
                    next_watch = time.monotonic() + self.backfill_seconds
            if self._landing_replaced():
                log.warning("the landing folder %s was replaced (moved away, deleted or made again): watching the "
                            "folder now there, and listing it", readable(self.local))
                self._stop_watcher()
                next_watch = next_backfill = time.monotonic()
                continue
            try:
                if self._observer is not None:
                    self.flush_events()
                if time.monotonic() >= next_recheck:
                    self.recheck()
                    next_recheck = time.monotonic() + RECHECK_SECONDS
                if time.monotonic() >= next_backfill:
                    self.backfill()
                    next_backfill = time.monotonic() + self.backfill_seconds
            except Exception:  # a failed commit or listing is retried on the next tick; never stop discovering
                log.exception("discovery failed; retrying")
            # A renamed-in file wakes the thread at once; the files that arrive during a commit go in the next one.
            self._events.arrived.wait(self.commit_seconds)
            self._events.arrived.clear()

    def stop(self) -> None:
        """Stop the timer and the watcher (recording what has settled first)."""
        self._stop.set()
        self._events.arrived.set()
        if self._thread is not None:
            self._thread.join()  # it starts the watcher: joined first, so no watcher starts after this
        if self._observer is not None:
            self._stop_watcher()
            self.flush_events(everything=True)
